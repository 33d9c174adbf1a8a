"""The HTTP face of `cme serve`: MLflow's scoring protocol, parsed by MLflow's own code (so
every request `mlflow models serve` accepts is accepted here: dataframe_split,
dataframe_records, instances, inputs, CSV), answered by the model the source holds now.

Refusals are 4xx with a JSON body naming the row and the reason: 400 for a body or image
that cannot be read, 413 for a request or image over the limits, 415 for a content type
other than JSON or CSV. The server keeps serving after every one of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

# At module level: FastAPI resolves the handlers' annotations in this module's namespace.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from registry.labels.service import utc_now
from registry.prediction_log import PredictionRecord
from usecases.http_server import body_within
from usecases.serving import (
    DEFAULT_MAX_REQUEST_BYTES,
    SERVE_SOURCE,
    Prediction,
    ServedModel,
    predictions_of,
)

TOO_LARGE = "REQUEST_LIMIT_EXCEEDED"
EMPTY_BODY = (
    'empty request body: send {"dataframe_split": {"columns": ["image"], '
    '"data": [["<base64 JPEG>"]]}}'
)


class ModelSource(Protocol):
    @property
    def current(self) -> ServedModel: ...

    def describe(self) -> dict[str, Any]: ...


class _Scoring:
    """What MLflow's `invocations` calls as the model: one request's view of the served copy,
    keeping its answers (for the log) and an image refusal (for a clean 4xx)."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.metadata = served.pyfunc.metadata
        self.predictions: list[Prediction] = []
        self.refusal: Exception | None = None

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        from pipelines.training.pyfunc import InvalidImage, ModelFault

        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        try:
            self.predictions = predictions_of(self.served, frame, [None] * len(frame))
        except (InvalidImage, ModelFault) as refusal:
            self.refusal = refusal
            raise
        return pd.DataFrame(
            {
                "probability": [p.probability for p in self.predictions],
                "melanoma": [p.melanoma for p in self.predictions],
                "model_version": [p.model_version for p in self.predictions],
            }
        )


def scoring_app(
    source: ModelSource,
    model_name: str,
    log: Callable[[Sequence[PredictionRecord]], None] | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> Any:
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import invocations
    from mlflow.version import VERSION

    app = FastAPI(title="cme scoring server", docs_url=None, redoc_url=None)

    @app.get("/ping")
    @app.get("/health")
    async def ping() -> Response:
        return Response("\n", status_code=200, media_type="application/json")

    @app.get("/version")
    async def version() -> Response:
        return Response(VERSION, status_code=200, media_type="application/json")

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return {"model_name": model_name, **source.current.describe(), **source.describe()}

    @app.post("/invocations")
    async def invocations_endpoint(request: Request) -> Any:
        body, size = await body_within(request, max_request_bytes)
        if size > max_request_bytes:
            return _too_large(size, max_request_bytes)
        if not body.strip():
            return _refused(400, "BAD_REQUEST", EMPTY_BODY)
        scoring = _Scoring(source.current)
        content_type = request.headers.get("content-type") or ""
        schema = scoring.metadata.get_input_schema()
        try:
            result = await asyncio.to_thread(invocations, body, content_type, scoring, schema)
        except MlflowException as error:
            if scoring.refusal is not None:
                return _image_refused(scoring.refusal)
            failure: Any = error  # MLflow's own answer: its code, status and message
            return Response(failure.serialize_as_json(), failure.get_http_status_code(),
                            media_type="application/json")  # fmt: skip
        if log is not None and result.status == 200:
            at = utc_now()
            log([p.record(model_name, SERVE_SOURCE, at) for p in scoring.predictions])
        return Response(result.response, status_code=result.status, media_type=result.mimetype)

    return app


def _refused(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


def _too_large(size: int, limit: int) -> Response:
    message = f"request of {size:,} bytes is over the limit of {limit:,} bytes: send fewer images"
    return _refused(413, TOO_LARGE, message)


def _image_refused(refusal: Exception) -> Response:
    from pipelines.training.pyfunc import ImageTooLarge, ModelFault

    if isinstance(refusal, ModelFault):  # the server's fault, not the caller's
        return _refused(500, "INTERNAL_ERROR", str(refusal))
    if isinstance(refusal, ImageTooLarge):
        return _refused(413, TOO_LARGE, str(refusal))
    return _refused(400, "INVALID_PARAMETER_VALUE", str(refusal))
