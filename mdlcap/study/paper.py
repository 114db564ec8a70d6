"""Every number the paper (and the CAQ proposal) states, and every verdict threshold: one place.

Notebooks, claims and tables read these; nothing else types them again.
"""
from __future__ import annotations

# Verdict thresholds
THRESHOLDS = {
    "closed_form_rel_error": 1e-5,   # closed forms vs cvxpy (Theorems 2-3): max relative deviation
}
