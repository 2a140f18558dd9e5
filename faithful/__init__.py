"""faithful: FaithfulSAE (Cho et al., 2025) on TransformerLens and SAELens.

Train sparse autoencoders on a model's own samples and measure what changes: dataset
statistics, seed stability (SFR), fake features (FFR), reconstruction faithfulness, probing.
"""
from .models import (EMBEDDED, SKIP_POSITIONS, PRESETS, HubUnavailableError, SAEPreset,
                     content_mask, default_layer, hook_name, load_model, model_name, sae_preset,
                     special_token_ids, start_token_id, stop_token_ids)
from .profiles import PROFILES, Profile, get_profile

__version__ = "0.1.0"
from .corpora import ALPACA_TEMPLATE, CORPORA, CorpusSpec, available_corpora, load_corpus
from .runs import list_runs, plot_training_curves, run_dir
from .train import TrainSettings, load_sae, train_corpora, train_saes
from .fidelity import FidelityMatrix, FidelityResult, eval_contexts, fidelity_matrix, reconstruction_metrics
from .matching import SFRResult, SFRTable, chance_sfr, decoder_matrix, random_decoder, sfr_table, shared_feature_ratio
from .probing import INPUTS, TASKS, ProbeResult, ProbeTable, ProbeTask, load_task, probe, probe_table
from .fake import FFRResult, FFRTable, fake_feature_ratio, ffr_table, firing_counts, firing_frequencies
from .generate import faithful_dataset_for, generate_faithful_dataset, load_faithful_dataset
from .stats import DatasetStats, dataset_stats, stats_table
from .widgets import FeatureBrowser, feature_examples
