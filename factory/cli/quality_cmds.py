"""Commands for this area are registered here (see factory/cli/app.py)."""
