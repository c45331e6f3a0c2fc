"""All gateway settings: one pydantic-settings class, built once and passed down."""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.vocab import BERT_BASE_UNCASED

# The slowest rate limit refill accepted: one token a day. Retry-After (at most 1 / rate) stays a number of
# seconds a client can use; 1e-300 per second gave a 301-digit one.
RATE_LIMIT_MIN_PER_S = 1 / 86_400


class Settings(BaseSettings):
    """Gateway settings, read from ``GATEWAY_*`` environment variables (or a ``.env`` file).

    Each field is documented by its ``Field(description=...)``; README's settings table is generated
    from them (``.venv/bin/python scripts/settings_table.py --write``).
    """

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address ``python -m gateway`` listens on.")
    port: int = Field(default=8080, description="Port ``python -m gateway`` listens on.")
    log_level: str = Field(
        default="info", description="Logging level of the gateway and uvicorn (``debug``, ``info``, ``warning``, ...)."
    )

    triton_url: str = Field(
        default="127.0.0.1:8001",
        description="Triton gRPC endpoint, ``host:port`` or a gRPC target such as ``dns:///host:port``.",
    )
    triton_timeout_s: float = Field(
        default=30.0,
        description=(
            "Deadline of one Triton call, its retries and back-offs included (inference, configuration "
            "read, shared-memory registration); past it 504 ``upstream_timeout``."
        ),
    )
    triton_retries: int = Field(
        default=3, description="Extra attempts for a call that failed with gRPC ``UNAVAILABLE``."
    )
    triton_retry_backoff_s: float = Field(
        default=0.2, description="First back-off between attempts (doubles each retry)."
    )
    triton_shared_memory: bool = Field(
        default=False,
        description=(
            "Send the image models' input (a detector's letterboxed image, 1.2 MB at 640x640; a classifier's "
            "crop, 150 kB at 224x224) through system shared memory instead of gRPC: the gateway draws it "
            "straight into a region the Triton client owns "
            "(docs/benchmarks.md, section What sets the gateway's CPU). "
            "Only where gateway and Triton share ``/dev/shm`` (one host or pod). "
            "Outputs always come back over gRPC."
        ),
    )
    triton_shared_memory_regions: int = Field(
        default=16, description="Shared-memory regions per model input (all busy: that request's input goes over gRPC)."
    )
    triton_shared_memory_sweep_s: float = Field(
        default=60.0,
        ge=0,
        description=(
            "With shared memory on: at start-up and then every this many seconds, unregister from Triton "
            "and unlink the regions that gateway processes which died (SIGKILL, OOM kill, a restarted "
            "container on a shared ``/dev/shm``) left behind; a region is live while its process holds a "
            "lock on its ``/dev/shm`` file. 0: never."
        ),
    )
    model_repository: pathlib.Path | None = Field(
        default=pathlib.Path("triton_repo"),
        description=(
            "The Triton model repository, read for engine manifests (weights provenance); None when the "
            "gateway cannot see it."
        ),
    )

    qa_model: str = Field(default="bert_qa", description="Triton model name.")
    detect_model: str | None = Field(
        default=None,
        description=(
            "The ``/detect`` default; None picks from ``detect_models`` by weights provenance: the "
            "first with a supplied checkpoint, else the first pretrained (nanodet), else the first "
            "listed."
        ),
    )
    detect_models: list[str] = Field(
        default_factory=lambda: ["nanodet", "yolov5n"],
        description="Triton model names selectable by ``/detect?model=`` (unknown name: 404).",
    )
    classify_models: list[str] = Field(
        default_factory=lambda: ["resnet50_vd", "efficientnet_lite0"],
        description="Triton model names selectable by ``/classify?model=``; the first is the default.",
    )

    qa_vocab: pathlib.Path = Field(
        default=BERT_BASE_UNCASED,
        description="The uncased WordPiece vocabulary of the QA model (bert-base-uncased, shipped).",
    )
    qa_max_seq_len: int | None = Field(
        default=None,
        description=(
            "Tokens per window; None (default) follows the QA model's ``input_ids`` dims. Set, it must "
            "equal them or the gateway refuses to start (:mod:`gateway.model_io`)."
        ),
    )
    qa_doc_stride: int = Field(default=32, description="Tokenisation windows and span decoding.")
    qa_max_question_tokens: int = Field(default=64, description="Tokenisation windows and span decoding.")
    qa_max_answer_tokens: int = Field(default=30, description="Tokenisation windows and span decoding.")
    qa_n_best: int = Field(default=20, description="Tokenisation windows and span decoding.")
    qa_max_context_chars: int = Field(default=100_000, description="Longest accepted context.")

    max_upload_bytes: int = Field(default=20 * 1024 * 1024, description="Largest accepted image upload.")
    max_body_bytes: int = Field(
        default=21 * 1024 * 1024, description="Largest accepted request body of any kind (refused before parsing)."
    )
    max_inflight: int = Field(
        default=256, description="Most task requests processed at once; more get 503 with Retry-After (0: no bound)."
    )
    max_image_pixels: int = Field(default=40_000_000, description="Largest accepted decoded image (width x height).")

    detect_img_size: int | None = Field(
        default=None,
        description=(
            "Letterbox size of the YOLO-format detectors; None (default) follows each model's "
            "``images`` dims (NanoDet always follows its model). Set, it must equal them or the gateway "
            "refuses to start."
        ),
    )
    detect_conf_threshold: float = Field(default=0.25, description="Detection post-processing (all models).")
    detect_iou_threshold: float = Field(default=0.45, description="Detection post-processing (all models).")
    detect_max_det: int = Field(default=300, description="Detection post-processing (all models).")

    classify_resize: int = Field(
        default=256,
        description=(
            "Classification pre/post (shorter side resized to ``classify_resize``, then the centre "
            "crop; must be at least the crop)."
        ),
    )
    classify_crop: int | None = Field(
        default=None,
        description=(
            "Centre-crop size; None (default) follows each classifier's ``images`` dims. Set, it must "
            "equal them or the gateway refuses to start."
        ),
    )
    classify_top_k: int = Field(
        default=5,
        description=(
            "Classification pre/post (shorter side resized to ``classify_resize``, then the centre "
            "crop; must be at least the crop)."
        ),
    )

    body_timeout_s: float = Field(
        default=30.0,
        description=(
            "Deadline for a request body to arrive in full, once its headers have; past it 408 "
            "``request_timeout`` and the connection is closed. Bodies are read before admission, so an "
            "upload in progress never holds one of the ``max_inflight`` slots."
        ),
    )
    max_body_reads: int = Field(
        default=1024,
        description=(
            "Most request bodies being read at once; more get 503 ``overloaded`` with Retry-After (0: no bound)."
        ),
    )
    max_buffered_body_bytes: int = Field(
        default=1024 * 1024 * 1024,
        description=(
            "Most request-body bytes the gateway holds at once, from their arrival until the request is "
            "answered (Content-Length is reserved up front); a body that would go over gets 503 "
            "``overloaded`` with Retry-After (0: no bound)."
        ),
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        description=(
            "Largest request line plus headers; over it 431 ``headers_too_large`` and the connection is "
            "closed (with either ``http_parser``: the gateway stops buffering at this size). Also the largest "
            "header block of one part of a multipart upload; over it 400 ``invalid_multipart``."
        ),
    )
    header_timeout_s: float = Field(
        default=10.0,
        description=(
            "Deadline for a request's line and headers to arrive, counted from the connection's opening "
            "or, on a kept-alive connection, from the next request's first byte; past it 408 "
            "``request_timeout`` (nothing if no byte came) and the connection is closed."
        ),
    )
    max_image_aspect_ratio: float = Field(
        default=20.0,
        description=(
            "Largest accepted ratio of an image's longer side to its shorter side; beyond it 422 "
            "``unsupported_image_shape`` before decoding (0: no limit)."
        ),
    )
    image_decode_budget_bytes: int = Field(
        default=1024 * 1024 * 1024,
        description=(
            "Decoding memory all image requests may hold at once; each reserves ``width x height x b`` "
            "bytes, read from the header before decoding (``b`` by pixel mode: 3 for 1-bit and grey, 6 "
            "palette, 7 16-bit grey, 9 colour and the rest), while it is decoded and resized. An image "
            "that alone exceeds it gets 413 (0: no budget)."
        ),
    )
    image_decode_wait_s: float = Field(
        default=2.0,
        description=(
            "How long an image request waits for its share of the budget before 503 ``overloaded`` with "
            "``Retry-After``."
        ),
    )
    qa_max_windows: int = Field(
        default=128,
        description=(
            "Most 128-token windows one /qa context may need; more get 413 ``too_many_windows`` "
            "(checked after tokenising, before any inference)."
        ),
    )
    qa_chunk_rows: int = Field(
        default=16,
        description=(
            "Windows per Triton call of one /qa request (capped by the model's ``max_batch_size``); a "
            "request's calls go one at a time, so other requests' rows join Triton's batches between "
            "them (0: ``max_batch_size`` rows, or all windows when that is 0)."
        ),
    )
    request_timeout_s: float = Field(
        default=30.0,
        description=(
            "Deadline of a task request that sends no ``X-Request-Timeout`` header; past it the "
            "request's Triton work is cancelled and the client gets 504 ``upstream_timeout``."
        ),
    )
    max_request_timeout_s: float = Field(
        default=60.0,
        description=("Longest deadline a client may ask for with ``X-Request-Timeout`` (larger values are cut to it)."),
    )
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Comma-separated API keys (secret: never logged or shown); with any key set (here or in "
            "``api_keys_file``) every path but ``/healthz`` and ``/readyz`` needs one, as "
            "``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, else 401."
        ),
    )
    api_keys_file: pathlib.Path | None = Field(
        default=None,
        description=(
            "A file of API keys, one per line, ``#`` comments and blank lines ignored; read once at "
            "start-up (a set file without keys is an error, not an open gateway). With ``workers`` > 1 the "
            "supervisor reads it and every worker, a replacement too, gets those keys: changing or removing "
            "the file takes effect at the gateway's next start."
        ),
    )
    docs_enabled: bool = Field(
        default=True, description="Serve ``/docs``, ``/redoc`` and ``/openapi.json`` (behind the keys when set)."
    )
    rate_limit_per_s: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Requests per second refilled into each client's token bucket (0: no limit; else at least "
            "1/86400, one a day, so ``Retry-After`` stays at most a day); a client is its API key when keys "
            "are set, else its IP (an IPv6 one by ``rate_limit_ipv6_prefix``). Empty bucket: 429."
        ),
    )
    rate_limit_burst: int = Field(
        default=20, ge=1, description="Bucket capacity: the most requests a client can make at once."
    )
    rate_limit_ipv6_prefix: int = Field(
        default=64,
        ge=1,
        le=128,
        description=(
            "Without API keys, an IPv6 client's bucket is its network of this many bits (one host is given a "
            "whole /64 and could rotate addresses through it); 128: per address. IPv4 clients: per address."
        ),
    )
    rate_limit_max_clients: int = Field(
        default=10_000, ge=1, description="Most buckets tracked; past it the least recently seen is dropped."
    )
    metrics_port: int | None = Field(
        default=None,
        description=(
            "Serve ``/metrics`` on this port (same host, no API key) instead of the main one, whose "
            "``/metrics`` then answers 404; None: on the main port."
        ),
    )
    latency_budget_s: float = Field(
        default=5.0,
        description=(
            "Shed a task request (503 ``overloaded`` with Retry-After) when its predicted latency, the "
            "measured per-request service time of its route and model times the requests ahead of it, "
            "is over this, or while the oldest request of that route and model has been in flight "
            "longer than this (0: no latency shedding; ``max_inflight`` still applies)."
        ),
    )
    triton_reconnect_backoff_initial_s: float = Field(
        default=0.1,
        description=(
            "GRPC reconnect back-off to Triton after a lost connection, first and largest (gRPC's own "
            "defaults, 1 s and 120 s, kept the gateway failing for up to two minutes after Triton was "
            "back)."
        ),
    )
    triton_reconnect_backoff_max_s: float = Field(
        default=1.0,
        description=(
            "GRPC reconnect back-off to Triton after a lost connection, first and largest (gRPC's own "
            "defaults, 1 s and 120 s, kept the gateway failing for up to two minutes after Triton was "
            "back)."
        ),
    )
    triton_connect_timeout_s: float = Field(
        default=1.0,
        description=(
            "Deadline of one gRPC connection attempt (gRPC's ``min_reconnect_backoff_ms``; its default is 20 s)."
        ),
    )
    shutdown_timeout_s: int = Field(
        default=10,
        description=(
            "On SIGTERM, how long in-flight requests may drain before they are cancelled and the "
            "process exits (uvicorn ``timeout_graceful_shutdown``)."
        ),
    )
    health_probe_interval_s: float = Field(
        default=10.0,
        description=(
            "Pause between rounds of probe inferences (one tiny inference per served model, one model "
            'at a time); a model that fails its probe, or a real request with a "cannot serve" error '
            "(dead stub, model not loaded), makes ``/readyz`` answer 503 until it serves again. 0 "
            "disables the prober (real requests still count)."
        ),
    )
    health_probe_timeout_s: float = Field(
        default=5.0, description="Deadline of one probe inference (a slower answer counts as a failure)."
    )
    health_probe_retry_interval_s: float = Field(
        default=1.0,
        description=(
            "Pause between probe rounds while a model is unhealthy (at most "
            "``health_probe_interval_s``), so ``/readyz`` turns 200 soon after the model or Triton is "
            "back."
        ),
    )

    workers: int = Field(
        default=1,
        ge=1,
        description=(
            "Gateway worker processes of ``python -m gateway`` (uvicorn workers sharing the port; "
            "metrics aggregated through ``PROMETHEUS_MULTIPROC_DIR``); 1 = a single process. The "
            "per-process limits (``max_inflight``, ``max_body_reads``, ``max_buffered_body_bytes``) apply to "
            "each worker; the rate limit's buckets are one table all workers share. A worker that dies is "
            "replaced; its in-flight gauge and shared-memory regions are released by the supervisor."
        ),
    )
    triton_lb_policy: Literal["pick_first", "round_robin"] = Field(
        default="pick_first",
        description=(
            "GRPC load balancing over the addresses ``triton_url`` resolves to: ``pick_first`` (one "
            "connection) or ``round_robin`` (every address, calls spread in turn; with "
            "``dns:///<headless-service>:8001`` in Kubernetes, every Triton pod)."
        ),
    )
    model_config_wait_s: float = Field(
        default=60.0,
        description=(
            "Where the gateway cannot read the model repository (``model_repository`` None or not "
            "mounted), it reads each model's configuration from Triton at start-up, waiting up to this "
            "long for Triton; past it, start-up fails."
        ),
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description=(
            "``json`` (default; also in the containers, which set nothing): one JSON object per log "
            "line with ``request_id`` on every line written while a request is served, uvicorn's access "
            "and error lines included (see :mod:`gateway.logs`); ``text``: one readable line each, the "
            "request id in brackets. Any other value stops the gateway at start-up."
        ),
    )

    http_parser: Literal["httptools", "h11"] = Field(
        default="httptools",
        description=(
            "``httptools`` (uvicorn's C parser, the default: much less gateway CPU per request, docs/benchmarks.md) or "
            "``h11`` (pure Python); both enforce ``max_header_bytes`` (431) and ``header_timeout_s`` (408) "
            "and answer malformed requests with 400 ``bad_request``."
        ),
    )
    reduced_decode: bool = Field(
        default=True,
        description=(
            "Decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT-domain scaling) when the model's resize "
            "shrinks it 2x or more, never below the size the resize needs; about half the decode CPU and a "
            "far cheaper resize, inputs within a few grey levels of a full decode "
            "(``benchmarks/reduced_decode.py``). False: always decode in full."
        ),
    )
    precision_variants: list[str] = Field(
        default_factory=lambda: ["fp16", "int8"],
        description=(
            "Precisions whose variants are served next to each configured model (``qa_model``, "
            "``detect_models``, ``classify_models``) when built: ``<model>_<precision>`` (e.g. "
            "``resnet50_vd_int8``, from ``python -m magicmind_build --precision int8``) is served if its "
            "manifest is in ``model_repository``, selectable with ``?model=`` on its task's route; a name "
            "not served is 404 ``unknown_model``. Empty: none."
        ),
    )
    task_threads: int = Field(
        default=4,
        ge=1,
        description=(
            "Threads of the gateway's own pool (per worker process) where image decoding and detection "
            "post-processing run; a request waits for a free thread (the image decoding budget still "
            "bounds the memory)."
        ),
    )
    max_form_parts: int = Field(
        default=16,
        ge=1,
        description=(
            "Most parts in a ``multipart/form-data`` upload to ``/detect`` or ``/classify`` (one is the "
            "``file``; others are ignored); more: 413 ``payload_too_large``. Also how many times the boundary "
            "may occur inside part data (RFC 2046 wants none); more: 400 ``invalid_multipart``."
        ),
    )
    malloc_mmap_threshold_bytes: int | None = Field(
        default=16 * 2**20,
        ge=0,
        description=(
            "glibc ``M_MMAP_THRESHOLD`` of each gateway process: blocks this large or larger are mapped "
            "fresh and returned to the kernel when freed; smaller ones are reused from the heap. Raised "
            "from glibc's 128 kB so a request's image buffers are not page-faulted in again every request "
            "(``gateway/_malloc.py``). Unset or 0: glibc's default."
        ),
    )
    malloc_trim_threshold_bytes: int | None = Field(
        default=64 * 2**20,
        ge=0,
        description=(
            "glibc ``M_TRIM_THRESHOLD`` of each gateway process: free heap memory kept per malloc arena "
            "before it is returned to the kernel (the memory cost of the setting above). Unset or 0: "
            "glibc's default."
        ),
    )
    fast_jpeg: bool = Field(
        default=True,
        description=(
            "Read and decode JPEGs with libjpeg-turbo directly (``simplejpeg``) instead of through PIL: "
            "the same pixels, bit for bit, and the same refusals (JPEGs it is not sure about, CMYK, "
            "12-bit, arithmetic-coded or lossless ones, and every limit exceeded go through PIL as before), "
            "for less CPU per image request (the header check on the event loop and the decode). "
            "False: PIL for every image."
        ),
    )
    opentelemetry: bool = Field(
        default=False,
        description=(
            "FastAPI's native OpenTelemetry instrumentation (traces, metrics and logs through the global "
            "providers an installed OpenTelemetry SDK configures). Off by default: the gateway ships no SDK, "
            "and the instrumentation's check for configured providers costs CPU on every request."
        ),
    )
    max_jpeg_scans: int = Field(
        default=100,
        description=(
            "Most scans of a JPEG upload (progressive, or one scan per component); more: 413 "
            "``payload_too_large``, before decoding (0: no limit). Each scan costs about a decode of the image, "
            "and can be a few bytes: without a limit a 94 kB JPEG took 37 s of CPU. libjpeg writes 10 (6 for grey)."
        ),
    )
    max_jpeg_scan_pixels: int = Field(
        default=480_000_000,
        description=(
            "Most pixels (width x height) times scans of a JPEG upload; more: 413 ``payload_too_large``, before "
            "decoding (0: no limit). A progressive decode costs about that product: with ``max_jpeg_scans`` "
            "alone a 40 MP JPEG of 100 scans took several seconds of CPU in a thread that cannot be stopped. "
            "The default passes a progressive photo at ``max_image_pixels`` with up to 12 scans (libjpeg writes "
            "10, 6 for grey; an EXIF thumbnail's scans do not count)."
        ),
    )
    max_image_segments: int = Field(
        default=10_000,
        description=(
            "Most markers (segments, fill or junk bytes, Photoshop resource blocks) before a JPEG upload's first "
            "scan, or chunks of a PNG; "
            "more: 413 ``payload_too_large``, before PIL parses them (0: no limit). PIL steps over each in "
            "Python: a 19 MB JPEG of empty segments took its header check 15 s. "
            "Real files have tens; a 20 MB PNG with libpng's 8 kB IDAT chunks about 2,600."
        ),
    )
    max_qa_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        description=(
            "Largest ``/qa`` request body, refused before parsing with 413 ``payload_too_large`` (instead of "
            "``max_body_bytes``): the JSON is parsed on the event loop, and a 13 MB body of a million keys held "
            "it for 1.4 s. It must hold ``qa_max_context_chars`` characters JSON-escaped (up to 12 bytes each, "
            "an escaped emoji)."
        ),
    )
    triton_coalesce_inflight: int = Field(
        default=0,
        ge=0,
        description=(
            "Client-side coalescing (``gateway/coalesce.py``; 0, the default: off, every request its own call). "
            "N > 0: while N calls of a model are in flight, further requests on it wait and, when one returns, go "
            "out merged into one batched call, each with its own deadline (504 ``upstream_timeout``). It saves "
            "per-call CPU on both tiers where many calls overlap (engines at accelerator speed, many concurrent "
            "requests per gateway process: at 16 concurrent calls the Triton tier fell to 0.26-0.62 of its cost "
            "here); with slow engines and few clients it shrinks Triton's own batches and lengthens the tail "
            "(CPU engines, 4 clients: detector p99 about 2x). 2 keeps a call queued in Triton while another runs; "
            "keep it above a model's instance count."
        ),
    )
    triton_coalesce_max_rows: int = Field(
        default=8,
        ge=1,
        description=(
            "Most rows (images, QA windows) of a merged call; never more than the model's ``max_batch_size``. "
            "With shared memory on, a merged detector or classifier call borrows one region of this many rows."
        ),
    )
    forwarded_allow_ips: str | None = Field(
        default=None,
        description=(
            "Proxies trusted to name the client in ``X-Forwarded-For`` (and the scheme in "
            "``X-Forwarded-Proto``): comma-separated IP addresses or networks (``10.0.0.0/8``), ``*`` for any "
            "peer. The client so named is the rate limit's identity without API keys (429 ``rate_limited``). "
            "Unset (default) or empty: no proxy is trusted and the client is the connection's peer. (uvicorn's "
            "own default trusted 127.0.0.1: any local process could send a new ``X-Forwarded-For`` with each "
            "request, get a fresh bucket each time and never see a 429.)"
        ),
    )

    @field_validator("rate_limit_per_s")
    @classmethod
    def _rate_off_or_at_least_one_a_day(cls, rate: float) -> float:
        if 0 < rate < RATE_LIMIT_MIN_PER_S:
            raise ValueError(f"0 (off) or at least {RATE_LIMIT_MIN_PER_S:.3g} (one a day), got {rate}")
        return rate


def _markdown_default(value: object) -> str:
    """A setting's default as README shows it."""
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "unset" if not value.get_secret_value() else "(secret)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "`" + ",".join(str(v) for v in value) + "`"
    if isinstance(value, pathlib.Path) and value.is_absolute():
        root = pathlib.Path(__file__).resolve().parent.parent  # the checkout: not where it happens to be
        if value.is_relative_to(root):
            return f"`{value.relative_to(root)}`"
    return f"`{value}`"


def settings_markdown() -> str:
    """README's settings table (env var, default, description), generated from the fields' descriptions.

    Raises:
        ValueError: a field has no description.
    """
    rows = ["| setting | default | description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"Settings.{name} has no Field(description=...)")
        default = field.get_default(call_default_factory=True)
        description = field.description.replace("``", "`").replace("|", "\\|")
        rows.append(f"| `GATEWAY_{name.upper()}` | {_markdown_default(default)} | {description} |")
    return "\n".join(rows) + "\n"
