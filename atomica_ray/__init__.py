"""atomica-ray: ATOMICA's interface models trained and tuned on Ray."""

__version__ = "0.1.0"
