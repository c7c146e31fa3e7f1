"""Deployment templates and their renderer (deploy/render.py); see docs/DEPLOY.md."""
