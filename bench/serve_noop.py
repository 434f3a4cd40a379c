"""The benchmark's floor: a BentoML service configured like `IntentClassifier`, with the same
request model, that answers a constant. What it costs is BentoML's own overhead."""

import bentoml

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


@bentoml.service(workers=1, traffic={"timeout": 30}, logging={"access": {"enabled": False}})
class Noop:
    @bentoml.api(input_spec=PredictRequest, output_spec=Prediction)
    async def predict(self, text: str) -> Prediction:
        return _ANSWER
