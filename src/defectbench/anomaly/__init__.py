"""Anomaly detection: image-level scorers on frozen features (:mod:`.scorers`), the
score_anomaly stage (:mod:`.image_level`); PatchCore lives beside them.

Package ``__init__`` files import nothing: every job's code fingerprint
(:mod:`defectbench.fingerprint`) covers the package ``__init__`` and what it imports, so a
re-export here would make every anomaly job depend on every anomaly module.
"""
