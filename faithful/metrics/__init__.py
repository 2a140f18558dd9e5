"""The paper's metrics, one module each: Shared Feature Ratio (sfr), Fake Feature Ratio (ffr),
reconstruction fidelity and probing."""
