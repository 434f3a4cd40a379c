"""The benchmark's floor: a BentoML service configured like `IntentClassifier` that answers a
constant, so what it costs is BentoML's own request path.

Configured like the service: the same BentoML settings (one worker, request timeout, access log
off; the benchmark overrides workers and metrics for both alike), the same request and response
models, and the same start-up tuning, applied through the service's own code: its garbage
collector settings (`serving.runtime.tune_gc`) and the log filter that drops BentoML's tracebacks
for invalid request bodies. What it leaves out is everything a prediction costs: the model
call, building the `Prediction`, request coalescing, and the service's ASGI middleware (the
request limits of `serving.middleware`).
"""

import bentoml

from common.settings import REQUEST_TIMEOUT_S
from serving.runtime import configure_logging, tune_gc
from serving.schemas import Prediction, PredictRequest

_ANSWER = Prediction.model_validate(
    {
        "intent": "noop",
        "confidence": 1.0,
        "top_k": [{"intent": "noop", "p": 1.0}],
        "blend": {"batch_weight": 1.0, "speed_weight": 0.0},
        "models": {
            "batch_version": None,
            "batch_cutoff_offsets": None,
            "speed_snapshot_offsets": None,
            "speed_snapshot_age_s": None,
        },
        "source": "batch",
    }
)


@bentoml.service(
    workers=1, traffic={"timeout": REQUEST_TIMEOUT_S}, logging={"access": {"enabled": False}}
)
class Noop:
    def __init__(self) -> None:
        configure_logging()
        tune_gc()

    @bentoml.api(input_spec=PredictRequest, output_spec=Prediction)
    async def predict(
        self,
        text: str,
        query_id: str | None = None,
        user_id: str | None = None,
        locale: str | None = None,
    ) -> Prediction:
        return _ANSWER
