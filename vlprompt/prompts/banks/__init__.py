"""Template banks stored as data (no imports of the rest of vlprompt): registered in ``templates.py``."""
