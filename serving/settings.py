"""Settings of the serving layer, read from `SERVING_*` environment variables."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The service's request timeout (BentoML's `traffic.timeout`): a request still unanswered
# after it gets BentoML's 504.
REQUEST_TIMEOUT_S = 30


class ServingSettings(BaseSettings):
    """Where the models come from, how often they are reloaded, and the request limits.

    `champion_path` set means "serve the scikit-learn pipeline pickled in this file as the batch
    champion" instead of following the MLflow registry's `champion` alias: benchmarks and tests
    use it to serve without an MLflow server. `max_snapshot_age_s` is the freshness guard: a
    speed snapshot older than that is stale (the speed layer has stopped) and is not used.

    The request limits are answered before BentoML reads a request (`serving.middleware`):
    `max_body_bytes` leaves room for `max_batch` texts of 1,000 characters even when every
    character is JSON-escaped (64 x 12 KB at the defaults); `body_timeout_s`, counted from the
    moment the request's headers are all in, must stay under the service's request timeout
    (`REQUEST_TIMEOUT_S`), or a slow body is answered by BentoML's 504 instead of a 408;
    `max_header_bytes` is what the HTTP parser (h11) takes in a header block sent in pieces.
    """

    model_config = SettingsConfigDict(env_prefix="SERVING_", frozen=True)

    snapshot_dir: Path = Path("var/snapshots")
    champion_path: Path | None = None
    poll_s: float = Field(default=5.0, gt=0)
    max_snapshot_age_s: float = Field(default=900.0, gt=0)
    max_batch: int = Field(default=64, ge=1)
    top_k: int = Field(default=5, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    body_timeout_s: float = Field(default=10.0, gt=0, lt=REQUEST_TIMEOUT_S)
    max_header_bytes: int = Field(default=16_384, ge=1)
    host: str = "127.0.0.1"
    port: int = 3000
