"""This repository's Django project around the app: settings, ASGI entry point, URLs."""
