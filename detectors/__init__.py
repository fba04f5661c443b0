"""detectors: anomaly / out-of-distribution detection with normalizing flows.

Built only on invflow's public API.  The scoring methods, objectives, metrics and reports
of the seed papers arrive with the detectors issue; for now the package holds the offline
datasets and the command line (``python -m detectors demo``).
"""

__all__ = ["datasets"]
