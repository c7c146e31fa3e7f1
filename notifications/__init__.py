"""Real-time notifications over WebSocket, on Django Channels.

The public Python API lives in :mod:`notifications.sending`.
"""
