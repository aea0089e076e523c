"""WSGI entry point for gunicorn: ``gunicorn backend._wsgi:app`` (``litesam-backend serve`` runs this).

Each gunicorn worker imports this module: settings from the environment, logging, and the app with the
pre-annotation job routes and the batch ``/predict`` handler. The model is loaded lazily by the worker's first
prediction, after the fork, so workers never share torch state.
"""

from .app import create_app
from .jobs.batch import handle_batch_predict
from .jobs.options import JobOptions
from .jobs.routes import jobs_blueprint
from .logs import configure_logging
from .settings import Settings

settings = Settings.from_env()
configure_logging(settings)
JobOptions.from_json(None, settings.job_defaults)  # refuse to start on unknown LITESAM_JOB_DEFAULTS options
app = create_app(settings, blueprints=[jobs_blueprint], batch_predict=handle_batch_predict)
