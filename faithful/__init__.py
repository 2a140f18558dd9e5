"""faithful: FaithfulSAE (Cho et al., 2025) on TransformerLens and SAELens.

Train sparse autoencoders on a model's own samples and measure what changes: dataset
statistics, seed stability (SFR), fake features (FFR), reconstruction faithfulness, probing.

The package follows the pipeline: ``models`` (loading, hooks, the precision policy) →
``data`` (corpora, Faithful text, statistics, probing tasks) → ``activations`` → ``sae``
(training) → ``metrics`` (sfr, ffr, fidelity, probing) → ``widgets``. Each name below has one
import path besides this one: the module that defines it.
"""
import importlib.metadata

from .activations import eval_contexts
from .config import PROFILES, Profile, get_profile
from .data.corpora import ALPACA_TEMPLATE, CORPORA, CorpusSpec, available_corpora, load_corpus
from .data.generate import faithful_dataset_for, generate_faithful_dataset, load_faithful_dataset
from .data.stats import DatasetStats, dataset_stats, stats_table
from .data.tasks import TASKS, ProbeTask, load_task
from .metrics.curve import TrainingCurve, training_curve
from .metrics.ffr import FFRResult, FFRTable, fake_feature_ratio, ffr_table, firing_counts, firing_frequencies
from .metrics.fidelity import FidelityMatrix, FidelityResult, fidelity_matrix, reconstruction_metrics
from .metrics.probing import INPUTS, ProbeResult, ProbeTable, probe, probe_table
from .metrics.sfr import SFRResult, SFRTable, chance_sfr, decoder_matrix, random_decoder, sfr_over_training, \
    sfr_table, shared_feature_ratio
from .models import EMBEDDED, PRESETS, SKIP_POSITIONS, HubUnavailableError, SAEPreset, content_mask, default_layer, \
    hook_name, load_model, model_name, sae_preset, special_token_ids, start_token_id, stop_token_ids
from .sae.load import load_sae, load_snapshots
from .sae.runs import list_runs, plot_training_curves, run_dir
from .sae.train import TrainSettings, train_corpora, train_saes
from .widgets import FeatureBrowser, feature_examples

__version__ = importlib.metadata.version("faithful")
