"""All gateway settings: one pydantic-settings class, built once and passed down."""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.vocab import BERT_BASE_UNCASED


class Settings(BaseSettings):
    """Gateway settings, read from ``GATEWAY_*`` environment variables (or a ``.env`` file).

    Args:
        triton_url: Triton gRPC endpoint, ``host:port`` or a gRPC target such as ``dns:///host:port``.
        triton_timeout_s: deadline of one inference call.
        triton_retries: extra attempts for a call that failed with gRPC ``UNAVAILABLE``.
        triton_retry_backoff_s: first back-off between attempts (doubles each retry).
        triton_shared_memory: take the detectors' ``detections`` output (72 kB per image) through system
            shared memory instead of gRPC; only where gateway and Triton share ``/dev/shm`` (one host or pod).
            Measured no faster than gRPC since the output shrank from 8.5 MB (README, Detector outputs).
        triton_shared_memory_regions: shared-memory regions in the pool (busy pool: gRPC path).
        model_repository: the Triton model repository, read for engine manifests (weights
            provenance); None when the gateway cannot see it.
        qa_model: Triton model name.
        detect_model: the ``/detect`` default; None picks from ``detect_models`` by weights provenance: the
            first with a supplied checkpoint, else the first pretrained (nanodet), else the first listed.
        detect_models: Triton model names selectable by ``/detect?model=`` (unknown name: 404).
        classify_models: Triton model names selectable by ``/classify?model=``; the first is the default.
        qa_vocab: the uncased WordPiece vocabulary of the QA model (bert-base-uncased, shipped).
        qa_max_seq_len: tokens per window; None (default) follows the QA model's ``input_ids`` dims.
            Set, it must equal them or the gateway refuses to start (:mod:`gateway.model_io`).
        qa_doc_stride, qa_max_question_tokens, qa_max_answer_tokens, qa_n_best:
            tokenisation windows and span decoding.
        qa_max_context_chars: longest accepted context.
        max_upload_bytes: largest accepted image upload.
        max_body_bytes: largest accepted request body of any kind (refused before parsing).
        max_inflight: most task requests processed at once; more get 503 with Retry-After (0: no bound).
        max_image_pixels: largest accepted decoded image (width x height).
        detect_img_size: letterbox size of the YOLO-format detectors; None (default) follows each model's
            ``images`` dims (NanoDet always follows its model). Set, it must equal them or the gateway
            refuses to start.
        detect_conf_threshold, detect_iou_threshold, detect_max_det: detection post-processing (all models).
        classify_resize, classify_top_k: classification pre/post (shorter side resized to
            ``classify_resize``, then the centre crop; must be at least the crop).
        classify_crop: centre-crop size; None (default) follows each classifier's ``images`` dims. Set,
            it must equal them or the gateway refuses to start.
        model_config_wait_s: where the gateway cannot read the model repository
            (``model_repository`` None or not mounted), it reads each model's configuration from Triton
            at start-up, waiting up to this long for Triton; past it, start-up fails.
        body_timeout_s: deadline for a request body to arrive in full, once its headers have; past it
            408 ``request_timeout`` and the connection is closed. Bodies are read before admission,
            so an upload in progress never holds one of the ``max_inflight`` slots.
        max_body_reads: most request bodies being read at once; more get 503 ``overloaded`` with
            Retry-After (0: no bound).
        max_buffered_body_bytes: most request-body bytes the gateway holds at once, from their arrival
            until the request is answered (Content-Length is reserved up front); a body that would go
            over gets 503 ``overloaded`` with Retry-After (0: no bound).
        max_header_bytes: largest request line plus headers; over it 431 ``headers_too_large`` and the
            connection is closed (counted as the headers arrive, so they are never buffered past it).
        header_timeout_s: deadline for a request's line and headers to arrive, counted from the
            connection's opening or, on a kept-alive connection, from the next request's first byte;
            past it 408 ``request_timeout`` (nothing if no byte came) and the connection is closed.
        max_image_aspect_ratio: largest accepted ratio of an image's longer side to its shorter
            side; beyond it 422 ``unsupported_image_shape`` before decoding (0: no limit).
        image_decode_budget_bytes: decoding memory all image requests may hold at once; each
            reserves ``width x height x b`` bytes, read from the header before decoding (``b`` by pixel
            mode: 3 for 1-bit and grey, 6 palette, 7 16-bit grey, 9 colour and the rest), while it is
            decoded and resized. An image that alone exceeds it gets 413 (0: no budget).
        image_decode_wait_s: how long an image request waits for its share of the budget before
            503 ``overloaded`` with ``Retry-After``.
        qa_max_windows: most 128-token windows one /qa context may need; more get 413
            ``too_many_windows`` (checked after tokenising, before any inference).
        qa_chunk_rows: windows per Triton call of one /qa request (capped by the model's
            ``max_batch_size``); a request's calls go one at a time, so other requests' rows join
            Triton's batches between them (0: ``max_batch_size`` rows, or all windows when that is 0).
        request_timeout_s: deadline of a task request that sends no ``X-Request-Timeout`` header;
            past it the request's Triton work is cancelled and the client gets 504 ``upstream_timeout``.
        max_request_timeout_s: longest deadline a client may ask for with ``X-Request-Timeout``
            (larger values are cut to it).
        api_keys: comma-separated API keys (secret: never logged or shown); with any key set
            (here or in ``api_keys_file``) every path but ``/healthz`` and ``/readyz`` needs one,
            as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, else 401.
        api_keys_file: a file of API keys, one per line, ``#`` comments and blank lines ignored;
            read once at start-up (a set file without keys is an error, not an open gateway).
        docs_enabled: serve ``/docs``, ``/redoc`` and ``/openapi.json`` (behind the keys when set).
        rate_limit_per_s: requests per second refilled into each client's token bucket (0: no
            limit); a client is its API key when keys are set, else its IP. Empty bucket: 429.
        rate_limit_burst: bucket capacity: the most requests a client can make at once.
        rate_limit_max_clients: most buckets tracked; past it the least recently seen is dropped.
        metrics_port: serve ``/metrics`` on this port (same host, no API key) instead of the main
            one, whose ``/metrics`` then answers 404; None: on the main port.
        latency_budget_s: shed a task request (503 ``overloaded`` with Retry-After) when its predicted
            latency, the measured per-request service time of its route and model times the
            requests ahead of it, is over this, or while the oldest request of that route and model
            has been in flight longer than this (0: no latency shedding; ``max_inflight`` still applies).
        triton_reconnect_backoff_initial_s, triton_reconnect_backoff_max_s: gRPC reconnect back-off
            to Triton after a lost connection, first and largest (gRPC's own defaults, 1 s and
            120 s, kept the gateway failing for up to two minutes after Triton was back).
        triton_connect_timeout_s: deadline of one gRPC connection attempt (gRPC's
            ``min_reconnect_backoff_ms``; its default is 20 s).
        shutdown_timeout_s: on SIGTERM, how long in-flight requests may drain before they are
            cancelled and the process exits (uvicorn ``timeout_graceful_shutdown``).
        health_probe_interval_s: pause between rounds of probe inferences (one tiny inference per
            served model, one model at a time); a model that fails its probe, or a real request
            with a "cannot serve" error (dead stub, model not loaded), makes ``/readyz`` answer 503
            until it serves again. 0 disables the prober (real requests still count).
        health_probe_timeout_s: deadline of one probe inference (a slower answer counts as a failure).
        health_probe_retry_interval_s: pause between probe rounds while a model is unhealthy (at most
            ``health_probe_interval_s``), so ``/readyz`` turns 200 soon after the model or Triton is back.
        workers: gateway worker processes of ``python -m gateway`` (uvicorn workers sharing the port;
            metrics aggregated through ``PROMETHEUS_MULTIPROC_DIR``); 1 = a single process. The
            per-process limits (``max_inflight``, ``max_body_reads``, ``max_buffered_body_bytes``) apply
            to each worker.
        triton_lb_policy: gRPC load balancing over the addresses ``triton_url`` resolves to:
            ``pick_first`` (one connection) or ``round_robin`` (every address, calls spread in turn;
            with ``dns:///<headless-service>:8001`` in Kubernetes, every Triton pod).
        log_format: ``json`` (default; also in the containers, which set nothing): one JSON object per
            log line with ``request_id`` on every line written while a request is served, uvicorn's
            access and error lines included (see :mod:`gateway.logs`); ``text``: one readable line each,
            the request id in brackets. Any other value stops the gateway at start-up.
        http_parser: ``httptools`` (uvicorn's C parser, the default: about 1.8 ms less gateway CPU
            per request) or ``h11`` (pure Python); both enforce ``max_header_bytes`` (431) and
            ``header_timeout_s`` (408) and answer malformed requests with 400 ``bad_request``.
        reduced_decode: decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT-domain scaling) when
            the model's resize shrinks it 2x or more, never below the size the resize needs; about
            half the decode CPU and a far cheaper resize, inputs within a few grey levels of a full
            decode (``benchmarks/reduced_decode.py``). False: always decode in full.
        precision_variants: precisions whose variants are served next to each configured model
            (``qa_model``, ``detect_models``, ``classify_models``) when built: ``<model>_<precision>``
            (e.g. ``resnet50_vd_int8``, from ``python -m magicmind_build --precision int8``) is served
            if its manifest is in ``model_repository``, selectable with ``?model=`` on its task's route;
            a name not served is 404 ``unknown_model``. Empty: none.
    """

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"

    triton_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = 30.0
    triton_retries: int = 3
    triton_retry_backoff_s: float = 0.2
    triton_shared_memory: bool = False
    triton_shared_memory_regions: int = 16
    model_repository: pathlib.Path | None = pathlib.Path("triton_repo")

    qa_model: str = "bert_qa"
    detect_model: str | None = None
    detect_models: list[str] = Field(default_factory=lambda: ["nanodet", "yolov5n"])
    classify_models: list[str] = Field(default_factory=lambda: ["resnet50_vd", "efficientnet_lite0"])

    qa_vocab: pathlib.Path = BERT_BASE_UNCASED
    qa_max_seq_len: int | None = None
    qa_doc_stride: int = 32
    qa_max_question_tokens: int = 64
    qa_max_answer_tokens: int = 30
    qa_n_best: int = 20
    qa_max_context_chars: int = 100_000

    max_upload_bytes: int = 20 * 1024 * 1024
    max_body_bytes: int = 21 * 1024 * 1024
    max_inflight: int = 256
    max_image_pixels: int = 40_000_000

    detect_img_size: int | None = None
    detect_conf_threshold: float = 0.25
    detect_iou_threshold: float = 0.45
    detect_max_det: int = 300

    classify_resize: int = 256
    classify_crop: int | None = None
    classify_top_k: int = 5

    body_timeout_s: float = 30.0
    max_body_reads: int = 1024
    max_buffered_body_bytes: int = 1024 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    max_image_aspect_ratio: float = 20.0
    image_decode_budget_bytes: int = 1024 * 1024 * 1024
    image_decode_wait_s: float = 2.0
    qa_max_windows: int = 128
    qa_chunk_rows: int = 16
    request_timeout_s: float = 30.0
    max_request_timeout_s: float = 60.0
    api_keys: SecretStr = SecretStr("")
    api_keys_file: pathlib.Path | None = None
    docs_enabled: bool = True
    rate_limit_per_s: float = Field(default=0.0, ge=0)
    rate_limit_burst: int = Field(default=20, ge=1)
    rate_limit_max_clients: int = Field(default=10_000, ge=1)
    metrics_port: int | None = None
    latency_budget_s: float = 5.0
    triton_reconnect_backoff_initial_s: float = 0.1
    triton_reconnect_backoff_max_s: float = 1.0
    triton_connect_timeout_s: float = 1.0
    shutdown_timeout_s: int = 10
    health_probe_interval_s: float = 10.0
    health_probe_timeout_s: float = 5.0
    health_probe_retry_interval_s: float = 1.0

    workers: int = Field(default=1, ge=1)
    triton_lb_policy: Literal["pick_first", "round_robin"] = "pick_first"
    model_config_wait_s: float = 60.0
    log_format: Literal["json", "text"] = "json"
    http_parser: Literal["httptools", "h11"] = "httptools"
    reduced_decode: bool = True
    precision_variants: list[str] = Field(default_factory=lambda: ["fp16", "int8"])
