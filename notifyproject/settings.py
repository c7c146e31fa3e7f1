"""Project settings, read from the environment.

Every setting that differs between a laptop and production comes from an
environment variable with a safe development default; see README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from notifyproject.environment import (
    ConfigurationError,
    app_settings,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_log_level,
    env_redis_hosts,
)

BASE_DIR = Path(__file__).resolve().parent.parent
ENV = os.environ

DEBUG = env_bool(ENV, "DJANGO_DEBUG", False)

# A missing key with DEBUG off is reported by the system check notifyproject.E001,
# which stops a server's start-up with one line instead of a traceback.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY and DEBUG:
    from django.core.management.utils import get_random_secret_key

    SECRET_KEY = get_random_secret_key()

ALLOWED_HOSTS = env_list(ENV, "DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list(ENV, "DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "notifications",
    "notifyproject",  # the project's own system checks (notifyproject/checks.py)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "notifyproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "notifyproject.asgi.application"

# SQLite in the project folder by default; DATABASE_URL (postgres://...) in production.
try:
    DATABASES = {
        "default": dj_database_url.config(
            env="DATABASE_URL",
            default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
            conn_max_age=0,
        )
    }
except ValueError as exc:
    raise ConfigurationError(
        f"DATABASE_URL is not a database address ({exc}); use postgres://... or sqlite:///..."
    ) from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several daphne processes and bursts of connects share one file: WAL lets
    # readers run beside the writer, the busy timeout makes a writer wait instead
    # of failing, and IMMEDIATE transactions take the write lock up front so
    # that no transaction has to upgrade its lock half-way (a source of
    # "database is locked" that the busy timeout cannot cure).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    DATABASES["default"].setdefault("TEST", {})
    # A file-backed test database, so that daphne processes started by the tests share it.
    DATABASES["default"]["TEST"].setdefault("NAME", str(BASE_DIR / "test-db.sqlite3"))
else:
    # The registry writes a few times a second per process: keep connections
    # open (checked before reuse) rather than connect for every write.
    DATABASES["default"]["CONN_MAX_AGE"] = 60
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where collectstatic writes; nginx serves it in production (deploy/nginx/notify.conf).
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", "").strip() or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps' static folders when collectstatic has not run
# (development, tests); production runs collectstatic (bin/serve and deploy/ do).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Behind nginx (deploy/nginx/notify.conf, which overwrites X-Forwarded-Proto),
# the proxy terminates TLS. Trusted only in that mode: a client talking to
# daphne directly could otherwise claim https.
BEHIND_PROXY = env_bool(ENV, "NOTIFY_BEHIND_PROXY", False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Once the site is served over TLS (nginx with certbot, docs/DEPLOY.md): the
# session and CSRF cookies travel over https only, and browsers are told to
# stay on https (HSTS). Behind the proxy, which says what the client used,
# plain-http requests are also redirected to https.
HTTPS = env_bool(ENV, "DJANGO_HTTPS", False)
if HTTPS:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int(ENV, "DJANGO_HSTS_SECONDS", 3600)
    SECURE_SSL_REDIRECT = BEHIND_PROXY

# Channel layers: the in-memory layer for one process (nothing to install),
# Redis pub/sub through channels-redis when REDIS_URL (one Redis, or several
# comma-separated shards) or REDIS_SENTINELS is set: several daphne processes
# on one or many hosts. See notifications/layers/redis.py.
REDIS_HOSTS = env_redis_hosts(ENV)
if REDIS_HOSTS:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "notifications.layers.redis.RedisPubSubLayer",
            "CONFIG": {"hosts": REDIS_HOSTS, "prefix": os.environ.get("REDIS_PREFIX", "notify")},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "notifications.layers.memory.InMemoryLayer",
        }
    }

# The app's settings: each NOTIFY_<NAME> variable that is set becomes NOTIFICATIONS_<NAME>
# (notifyproject/environment.py; the defaults are the app's, notifications/conf.py). The
# README's settings table lists them: origins allowed to open the WebSocket
# (NOTIFY_ALLOWED_ORIGINS), the API keys of POST /api/notify/ (NOTIFY_API_KEYS), the
# registry's heartbeat (NOTIFY_HEARTBEAT_INTERVAL, NOTIFY_STALE_AFTER), where
# `manage.py notify` finds the server on the in-memory layer (NOTIFY_SERVER_URL)...
globals().update(app_settings(ENV))

# The example view /send/ needs a logged-in user; this is where one logs in.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "notifications:send"

LOG_LEVEL = env_log_level(ENV, "LOG_LEVEL", "INFO")
# "plain": readable lines. "json": one JSON object per record (time, level, logger, message, and
# fields such as connection, code and reason), for a log collector. daphne's access log is apart.
LOG_FORMAT = env_choice(ENV, "LOG_FORMAT", ("plain", "json"), "plain")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "{levelname}{name}{message}",
            "style": "{",
            "timestamp": "time",
            "rename_fields": {"levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "notifications": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # Python's warnings, through logging (Django captures them): in the same format.
        "py.warnings": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
