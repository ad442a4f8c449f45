"""The models this server serves, by name: the one place where a request finds its model.

`ModelRegistry.lease(name)` is how every protocol (`/segment`, `/v2` over HTTP, gRPC) looks a model up:
it returns the model's current `ServedModel`, held for the request (service/served.py), or raises
`UnknownModel` (404) or `NotReady` (503, while the model loads). `name` None is the default model: the
first, by name, of the models meant to be loaded.

Without a repository (`CENTERMASK_MODEL_REPOSITORY` unset) there is one model, `CENTERMASK_WEIGHTS`,
named by its config as before (`centermask_lite_V_19_slim_eSE_FPN_ms_4x`), with `centermask` as an alias.
With one, every folder is a model (service/repository.py) and all are loaded at start.

Loads and unloads (`load`, `unload`, `reload_changed` for SIGHUP) run one at a time. A load reads the
folder again, checks that the model fits in memory, loads and warms it up beside the version being
served, then switches to it in one step (no await in between, so every request sees either version
whole); the old version is retired in the background once the requests holding it are answered.
A failed load leaves the served version as it was. A load given its own config.json text (`config`)
serves those options until the model is loaded again: through the API, or by SIGHUP once its folder
changed.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from model.inference.load import check_options
from model.weights import DEFAULT_WEIGHTS
from service.errors import (
    InsufficientMemory,
    InvalidModel,
    InvalidRequest,
    ModelLoadFailed,
    NotReady,
    UnknownModel,
)
from service.metrics import Metrics
from service.repository import (
    InvalidOptions,
    ModelSource,
    RepositoryError,
    available_bytes,
    check_memory,
    model_names,
    read_source,
)
from service.served import PredictorLoader, ServedModel
from service.settings import Settings

logger = logging.getLogger(__name__)

# The name that, without a repository, also reaches the one model (as `/v2/models/centermask`).
MODEL_ALIAS = "centermask"
# The only version a model had before versions were its weights' SHA-256 prefix: still accepted (by
# `get` and `lease`) as the version served.
FORMER_VERSION = "1"


class ModelState:
    """A model's state in the repository index, in Triton's words."""

    READY = "READY"
    LOADING = "LOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class IndexEntry:
    """One model of the repository index: `version` and `reason` empty where there is none."""

    name: str
    version: str
    state: str
    reason: str


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        load_predictor: PredictorLoader,
        cpu_pool: ThreadPoolExecutor,
        *,
        on_worker_failure: Callable[[str], None],
        available_memory: Callable[[torch.device], int | None] = available_bytes,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._load_predictor = load_predictor
        self._cpu_pool = cpu_pool
        self._on_worker_failure = on_worker_failure
        # What `check_memory` compares a model's estimate with (tests replace it).
        self.available_memory = available_memory
        self._directory: Path | None = settings.model_repository
        # The server's predictor options: what a folder's config.json leaves unset.
        self._base = settings.predictor_options()
        self._models: dict[str, ServedModel] = {}
        # Models meant to be loaded: loaded, or loading for the first time.
        self._wanted: set[str] = set()
        self._loading: set[str] = set()
        self._reasons: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------------------------------------
    # Looking models up

    @property
    def repository(self) -> Path | None:
        """The repository's folder; None when the server serves its one model from CENTERMASK_WEIGHTS."""
        return self._directory

    def get(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The model's current version (not leased: for metadata and readiness; a request uses `lease`).

        `version`, when given and not empty, must be the one served (or `FORMER_VERSION`, which means it):
        UnknownModel otherwise, as for an unknown name; NotReady while the model loads."""
        real = self._resolve(name)
        served = self._models.get(real)
        if served is None:
            if real in self._wanted:
                raise NotReady(f"the model {real!r} is still loading")
            raise UnknownModel(self._unknown_message(real))
        if version and version not in (served.version, FORMER_VERSION):
            raise UnknownModel(
                f"unknown version {version[:20]!r} of {served.name}: the one served is {served.version!r}"
            )
        return served

    @contextlib.contextmanager
    def lease(self, name: str | None = None, version: str | None = None) -> Iterator[ServedModel]:
        """The model's current version (as `get`), held until the block ends: a reload meanwhile switches
        later requests to the new version, and retires this one only once this block is left."""
        with self.get(name, version).leased() as served:
            yield served

    def resolve_alias(self, name: str) -> str:
        """The model's own name for `name` (without a repository, `centermask` is the one model's alias)."""
        return self._aliases.get(name, name)

    def loaded(self) -> list[ServedModel]:
        """Every loaded model, by name."""
        return [self._models[name] for name in sorted(self._models)]

    def default_name(self) -> str | None:
        """The model of requests that name none: the first, by name, of those meant to be loaded."""
        names = sorted(self._wanted | self._models.keys())
        return names[0] if names else None

    @property
    def all_ready(self) -> bool:
        """Every model meant to be loaded is loaded and warm, and there is at least one."""
        return bool(self._models) and self._wanted <= self._models.keys()

    @property
    def is_alive(self) -> bool:
        return all(served.is_running for served in self._models.values())

    @property
    def depth(self) -> int:
        """Images waiting for inference, all models together."""
        return sum(served.depth for served in self._models.values())

    def _resolve(self, name: str | None) -> str:
        if name is None:
            default = self.default_name()
            if default is None:
                raise NotReady(
                    "no model is loaded" if self._directory is not None else "the model is still loading"
                )
            return default
        if (
            name not in self._models
            and name not in self._wanted
            and self._directory is None
            and not self._models
        ):
            # Without a repository the model's name is its config's, known once it has loaded.
            raise NotReady("the model is still loading")
        return self._aliases.get(name, name)

    def _unknown_message(self, name: str) -> str:
        served = ", ".join(map(repr, sorted(self._models))) or "none"
        if self._directory is not None and name in self._on_disk():
            return (
                f"the model {name[:100]!r} is not loaded (POST /v2/repository/models/{name}/load loads it); "
                f"loaded: {served}"
            )
        return f"unknown model {name[:100]!r}: this server serves {served}"

    def _on_disk(self) -> list[str]:
        if self._directory is None:
            return sorted(self._models)
        try:
            return model_names(self._directory)
        except RepositoryError:
            return []

    # ----------------------------------------------------------------------------------------------
    # The index

    def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository, loaded or not (Triton's repository index)."""
        entries = []
        for name in sorted(set(self._on_disk()) | self._models.keys() | self._wanted):
            served = self._models.get(name)
            if served is not None:
                reason = self._reasons.get(name, "")
                entries.append(IndexEntry(name, served.version, ModelState.READY, reason))
            elif name in self._loading or name in self._wanted:
                entries.append(IndexEntry(name, "", ModelState.LOADING, ""))
            else:
                entries.append(
                    IndexEntry(name, "", ModelState.UNAVAILABLE, self._reasons.get(name, "not loaded"))
                )
        return [entry for entry in entries if entry.state == ModelState.READY or not ready_only]

    # ----------------------------------------------------------------------------------------------
    # Loading, reloading, unloading

    async def load_initial(self) -> None:
        """Load every model of the repository (or the one model): any failure raises."""
        async with self._lock:
            if self._directory is None:
                await self._load(None)
                return
            names = model_names(self._directory)
            if not names:
                raise RepositoryError(
                    f"the model repository {self._directory} holds no model: add a folder <name>/ with a "
                    "model.pth in it"
                )
            self._wanted = set(names)
            for name in names:
                await self._load(name)

    async def load(self, name: str, config: str | None = None) -> ServedModel:
        """Load the model from its folder, or reload it: the new version is served once warm. `config`, a
        config.json text, stands for the folder's config.json in this load (InvalidRequest when it is not
        valid options, or the server has no repository)."""
        if config is not None and self._directory is None:
            raise InvalidRequest(
                "a load's config needs a model repository (CENTERMASK_MODEL_REPOSITORY): this server's one "
                "model takes its options from its settings"
            )
        async with self._lock:
            return await self._load(self._aliases.get(name, name), config)

    async def unload(self, name: str) -> None:
        """Stop serving the model: later requests get 404; requests holding it are answered first."""
        async with self._lock:
            real = self._aliases.get(name, name)
            if real not in self._models and real not in self._wanted:
                raise UnknownModel(self._unknown_message(real))
            self._wanted.discard(real)
            self._reasons[real] = "unloaded"
            served = self._models.pop(real, None)
            if served is not None:
                self._retire(served)
                logger.info("model unloaded", extra={"model": real, "model_version": served.version})

    async def reload_changed(self) -> dict[str, str]:
        """SIGHUP: reload every model whose folder changed, load new folders (not those unloaded through the
        API), unload removed ones. Returns
        what became of each model touched (its new version, "unloaded" or the error); a failure leaves
        the served version as it was."""
        outcome: dict[str, str] = {}
        async with self._lock:
            on_disk = set(self._on_disk()) if self._directory is not None else set(self._models)
            for name in sorted(on_disk):
                served = self._models.get(name)
                if served is None and self._reasons.get(name) == "unloaded":
                    continue  # unloaded through the API: it stays so until loaded again
                try:
                    source = self._source(name)
                    if served is not None and served.fingerprint == source.fingerprint:
                        continue
                    outcome[name] = (await self._load(name)).version
                except (RepositoryError, ModelLoadFailed, InvalidModel, InsufficientMemory) as error:
                    outcome[name] = str(error)
            if self._directory is not None:
                for name in sorted(self._models.keys() - on_disk):
                    self._wanted.discard(name)
                    self._reasons[name] = "its folder was removed"
                    self._retire(self._models.pop(name))
                    outcome[name] = "unloaded"
        logger.info("reloaded what changed", extra={"models": outcome})
        return outcome

    async def close(self, timeout_s: float) -> None:
        """Shutdown: stop every model's batcher (images still queued after `timeout_s` get 503)."""
        await asyncio.gather(*(served.close(timeout_s) for served in self._models.values()))
        for task in self._retiring:
            task.cancel()

    def _source(self, name: str | None, config: str | None = None) -> ModelSource:
        if self._directory is not None:
            assert name is not None
            return read_source(self._directory, name, self._base, config)
        weights = self._base.weights if self._base.weights is not None else DEFAULT_WEIGHTS
        try:
            stat = weights.stat()
            fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
        except OSError:
            fingerprint = ""
        return ModelSource(name or "", weights.parent, self._base, fingerprint)

    async def _load(self, name: str | None, config: str | None = None) -> ServedModel:
        """Load `name` (None: the one model without a repository) and switch to it; `config`: see `load`."""
        if self._directory is None and name is not None and name not in self._models:
            raise UnknownModel(self._unknown_message(name))
        try:
            source = self._source(name, config)
        except RepositoryError as error:
            self._metrics.model_loads.labels("refused").inc()
            if config is not None and isinstance(error, InvalidOptions):
                # The request is wrong, not the folder: the model's index entry keeps its reason.
                raise InvalidRequest(str(error)) from None
            if name is not None:
                self._reasons[name] = str(error)
            raise InvalidModel(str(error)) from None
        options = source.options
        try:
            device = check_options(options)
            weights = options.weights if options.weights is not None else DEFAULT_WEIGHTS
            check_memory(name or "the model", weights.stat().st_size, device, self.available_memory(device))
        except RepositoryError as error:
            self._metrics.model_loads.labels("refused").inc()
            raise InsufficientMemory(str(error)) from None
        except (RuntimeError, OSError, ValueError) as error:
            self._metrics.model_loads.labels("refused").inc()
            raise InvalidModel(f"{_which(name)}{error}") from None
        if name is not None:
            self._loading.add(name)
        try:
            served = await ServedModel.load(
                name,
                options,
                load_predictor=self._load_predictor,
                settings=self._settings,
                metrics=self._metrics,
                cpu_pool=self._cpu_pool,
                on_failure=self._on_worker_failure,
                fingerprint=source.fingerprint,
            )
        except Exception as error:
            if name is not None:
                self._reasons[name] = f"failed to load: {error}"
            self._metrics.model_loads.labels("failed").inc()
            logger.warning("model load failed", extra={"model": name, "error": str(error)})
            raise ModelLoadFailed(f"{_which(name)}{error}") from None
        finally:
            if name is not None:
                self._loading.discard(name)
        if self._directory is None:
            self._aliases = {MODEL_ALIAS: served.name}
        # The switch: one assignment, no await before it since the load.
        old = self._models.get(served.name)
        self._models[served.name] = served
        self._wanted.add(served.name)
        self._reasons.pop(served.name, None)
        self._metrics.model_info.labels(served.name, served.version).set(1)
        self._metrics.model_loads.labels("loaded").inc()
        if old is not None:
            self._retire(old)
            logger.info(
                "model reloaded",
                extra={
                    "model": served.name,
                    "model_version": served.version,
                    "previous_version": old.version,
                },
            )
        return served

    def _retire(self, served: ServedModel) -> None:
        """Retire a version in the background, once the requests holding it are answered."""
        metrics = self._metrics

        async def retire() -> None:
            await served.retire(self._settings.drain_timeout_s)
            current = self._models.get(served.name)
            if current is None or current.version != served.version:
                with contextlib.suppress(KeyError):
                    metrics.model_info.remove(served.name, served.version)

        task = asyncio.create_task(retire(), name=f"centermask-retire-{served.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def until_retired(self) -> None:
        """Wait for the versions being retired (tests)."""
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def _which(name: str | None) -> str:
    """A message's prefix naming the model (none for the one model of a server without a repository)."""
    return f"model {name!r}: " if name is not None else ""
