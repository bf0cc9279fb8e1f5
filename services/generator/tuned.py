"""Tuned generator variants on a replica: loaded from the shared store on first use, kept in a bounded LRU."""

from __future__ import annotations

import asyncio
import logging

from models import GeneratorModel
from services.common import variants
from services.common.errors import failed_precondition, invalid_argument, unavailable

log = logging.getLogger(__name__)


class Variant:
    """A variant's model as a batch key: equal (and batched together) exactly when the ids are equal."""

    __slots__ = ("vid", "model")

    def __init__(self, vid: str, model: GeneratorModel):
        self.vid = vid
        self.model = model

    def __hash__(self) -> int:
        return hash(self.vid)

    def __eq__(self, other) -> bool:
        return isinstance(other, Variant) and other.vid == self.vid


class VariantModels:
    """Builds variant models from the store and caches them per replica.

    Args:
        store: The shared variant store, or None (then every variant request is refused).
        cache_entries: Variant models kept at most on this replica.
        cache_bytes: Their weights' bytes kept at most.
    """

    def __init__(self, store: variants.VariantStore | None, cache_entries: int, cache_bytes: int):
        self.store = store
        self.cache: variants.VariantCache[GeneratorModel] = variants.VariantCache(cache_entries, cache_bytes)
        self._loading: dict[str, asyncio.Future] = {}
        self.loads = 0  # store reads (a cache miss each)

    async def get(self, base: GeneratorModel, vid: str) -> Variant:
        """The variant `vid` of `base`; raises a precise status when it cannot be used."""
        if not variants.is_variant_id(vid):
            raise invalid_argument("variant", f"{vid[:80]!r} is not a variant id; accepted: the id Invert returned "
                                              f"for a photo ({variants.ID_PREFIX} and {variants.ID_HEX} hex digits) "
                                              f"or empty for the base weights")
        if self.store is None:
            raise failed_precondition("this generator has no variant store (--redis-url); variants cannot be "
                                      "served: edit without tuning (skip_tuning) or configure the store")
        key = f"{base.name}/{vid}"
        model = self.cache.get(key)
        if model is not None:
            return Variant(vid, model)
        pending = self._loading.get(key)
        if pending is None:  # one store read per variant, however many requests wait for it
            pending = asyncio.ensure_future(self._load(base, vid))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        return Variant(vid, await asyncio.shield(pending))

    async def _load(self, base: GeneratorModel, vid: str) -> GeneratorModel:
        try:
            blob = await self.store.get(vid)
        except Exception as e:  # noqa: BLE001 - any store failure is reported as the store's
            raise unavailable(f"the variant store is unreachable ({type(e).__name__}: {e}); retry later") from None
        if blob is None:
            raise failed_precondition(f"variant {vid} is no longer in the variant store (expired or flushed); "
                                      f"invert the photo again to tune a new one")
        try:
            header, delta = variants.decode(blob, self.store.max_bytes)
            if header.get("base_model") != base.name:
                raise variants.VariantError(f"it was tuned from {header.get('base_model')!r}, not {base.name!r}")
            model = await asyncio.to_thread(self._build, base, delta)
            size = sum(v.size * 4 for v in delta.values())  # the tuned tensors: the rest is shared with the base
        except variants.VariantError as e:
            raise failed_precondition(f"variant {vid} in the store is unusable ({e}); invert the photo again "
                                      f"to tune a new one") from None
        self.loads += 1
        self.cache.put(f"{base.name}/{vid}", model, size)
        entries, held = self.cache.stats()
        log.info("variant loaded", extra={"variant": vid, "model": base.name, "cached": entries, "bytes": held})
        return model

    @staticmethod
    def _build(base: GeneratorModel, delta) -> GeneratorModel:
        net = variants.apply(base.net, delta)
        return GeneratorModel(base.spec, net, base.device, base.dtype)
