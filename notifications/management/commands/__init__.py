"""``manage.py notify`` and ``manage.py purge_connections``."""
