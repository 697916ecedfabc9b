"""What the HPO backends share: the ask/tell bookkeeping around their libraries.

A backend hands out tokens in order, keeps each asked token's entry (its configuration, its
budget where it has one, its origin and the library's own handles) until the token is told,
and then moves it to the told history. ``best``, ``origin``, ``outstanding`` and the shape of
``state_dict()`` (``backend``, ``settings``, ``next_token``, ``outstanding``, ``history``, plus
the library's own keys) follow from that, and are the same for SMAC and Optuna.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar


class TokenLedger:
    """Tokens, outstanding asks and told history of an HPO backend. A subclass sets ``name``,
    implements ``_settings()`` (what a saved state must have been saved with) and calls
    ``_open_ledger()`` in its constructor."""

    name: ClassVar[str]
    payload: ClassVar[str] = "config"  # the Tune searcher hands trials {"candidate": {"token": ..., "config": ...}}

    def _open_ledger(self) -> None:
        self.history: list[dict[str, Any]] = []
        self._next_token = 0
        self._outstanding: dict[int, dict[str, Any]] = {}  # token -> {config, origin, ...}

    def _settings(self) -> dict[str, Any]:  # pragma: no cover - every backend has its own
        raise NotImplementedError

    # --- ask / tell ---------------------------------------------------------------------
    def _take_token(self) -> int:
        token = self._next_token
        self._next_token += 1
        return token

    def _pending(self, token: Any) -> int | None:
        """``token`` as an outstanding int; ``None`` for junk, an unknown or a told token."""
        try:
            token = int(token)
        except (TypeError, ValueError):
            return None
        return token if token in self._outstanding else None

    def _told(self, token: int, value: float | None) -> None:
        """Move an outstanding token to the history with its score (``None``: failed)."""
        entry = self._outstanding.pop(token)
        self.history.append({"token": token, "config": dict(entry["config"]), "score": value,
                             "budget": entry.get("budget"), "origin": entry.get("origin")})

    def origin(self, token: int) -> str | None:
        """Where an asked token's configuration came from; ``None`` for a token never asked
        (or asked by a state saved before origins were kept)."""
        entry = self._outstanding.get(token) or next((r for r in self.history if r["token"] == token), None)
        return None if entry is None else entry.get("origin")

    def best(self) -> tuple[dict[str, Any], float] | None:
        """Best told configuration and its score; with budgets, the best at the highest budget
        any successful trial reached. Failures never count; ties go to the first told."""
        ok = [r for r in self.history if r["score"] is not None]
        if not ok:
            return None
        budgets = [r["budget"] for r in ok if r["budget"] is not None]
        if budgets:
            top = max(budgets)
            ok = [r for r in ok if r["budget"] == top]
        best = max(ok, key=lambda r: r["score"])  # max keeps the first of equal scores
        config = dict(best["config"])
        if best["budget"] is not None:
            config["budget"] = best["budget"]
        return config, best["score"]

    def outstanding(self) -> dict[int, dict[str, Any]]:
        """Asked, not yet told (with ``budget`` where the backend has budgets)."""
        out = {}
        for token, entry in self._outstanding.items():
            config = dict(entry["config"])
            if entry.get("budget") is not None:
                config["budget"] = entry["budget"]
            out[token] = config
        return out

    def max_parallel(self) -> int | None:
        """The libraries propose one at a time but accept any number of pending trials."""
        return None

    # --- checkpointing ------------------------------------------------------------------
    def _ledger_state(self) -> dict[str, Any]:
        """The keys of ``state_dict()`` every backend has (``outstanding`` is the backend's own)."""
        return {"backend": self.name, "settings": self._settings(), "next_token": self._next_token,
                "history": copy.deepcopy(self.history)}

    def _check_state(self, state: dict[str, Any]) -> None:
        """Refuse a state saved by another backend or with other settings."""
        if state.get("backend") != self.name:
            raise ValueError(f"state is for HPO backend {state.get('backend')!r}, not {self.name!r}")
        settings = self._settings()
        saved = state.get("settings") or {}
        if saved != settings:
            diff = sorted(k for k in set(settings) | set(saved) if settings.get(k) != saved.get(k))
            raise ValueError(f"{self.name}: state was saved with different settings ({', '.join(diff)})")

    def _load_ledger(self, state: dict[str, Any]) -> None:
        self._next_token = int(state["next_token"])
        self.history = copy.deepcopy(state["history"])
