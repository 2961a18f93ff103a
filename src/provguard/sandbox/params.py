"""The documented distributions of the sandbox platform (see ``docs/sandbox.md``).

All probabilities are per subject or per account as stated; :class:`SandboxParams` is frozen and
its defaults are the published sandbox. Edit tables map an edit name to its probability and must
sum to 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from provguard.sandbox.handles import EDITS, HandleStyle
from provguard.sandbox.pictures import AVATAR_EDITS

__all__ = ["SandboxParams"]


def _frozen(d: dict[str, float]) -> Mapping[str, float]:
    return MappingProxyType(d)


@dataclass(frozen=True)
class SandboxParams:
    """Distributions used by :func:`provguard.sandbox.platform.build_platform`.

    Subjects:
        login_probs: login method of the subject's douyin account (``wechat``/``qq``/``none``).
        chinese_name_prob: probability the legal name is Chinese (else Latin).
        handle_style: kinds of provider nicknames.
    Grants:
        grant_revoked_prob: probability a douyin grant has status ``revoked`` at the snapshot.
    Duoshan:
        duoshan_prob: probability a subject also has a duoshan account.
        duoshan_transfer_prob: for a duoshan user whose douyin login is wechat/qq, probability
            the duoshan account reused the douyin login (a transfer); else a phone sign-up.
    Handles (relative to the provider nickname):
        handle_provider_prob: on a grant-backed account, probability the handle came from the
            provider (``handle_source = provider``); it is then edited per
            ``handle_provider_edits``.
        handle_retype_prob: when the handle is user-typed and the subject has a provider
            nickname, probability the user re-typed (a copy of) it, edited per
            ``handle_retype_edits``; otherwise an unrelated handle (``handle_edit = user_input``).
        user_real_name_prob: probability an unrelated user-typed handle is the real name.
    Avatars (relative to the provider picture), same structure:
        avatar_provider_prob, avatar_provider_edits, avatar_reupload_prob,
        avatar_reupload_edits.
    """

    login_probs: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"wechat": 0.55, "qq": 0.30, "none": 0.15})
    )
    chinese_name_prob: float = 0.75
    handle_style: HandleStyle = field(default_factory=HandleStyle)
    grant_revoked_prob: float = 0.05
    duoshan_prob: float = 0.35
    duoshan_transfer_prob: float = 0.80
    handle_provider_prob: float = 0.70
    handle_provider_edits: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {
                "exact": 0.60,
                "emoji": 0.10,
                "suffix": 0.08,
                "traditional": 0.07,
                "fullwidth": 0.06,
                "decoration": 0.06,
                "case": 0.03,
            }
        )
    )
    handle_retype_prob: float = 0.35
    handle_retype_edits: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {
                "exact": 0.40,
                "emoji": 0.10,
                "suffix": 0.10,
                "traditional": 0.10,
                "fullwidth": 0.10,
                "decoration": 0.10,
                "case": 0.10,
            }
        )
    )
    user_real_name_prob: float = 0.10
    avatar_provider_prob: float = 0.75
    avatar_provider_edits: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"exact": 0.55, "resize": 0.15, "recompress": 0.15, "square_crop": 0.08, "mirror": 0.07}
        )
    )
    avatar_reupload_prob: float = 0.20
    avatar_reupload_edits: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"exact": 0.10, "resize": 0.20, "recompress": 0.50, "square_crop": 0.15, "mirror": 0.05}
        )
    )

    def __post_init__(self) -> None:
        """Validate: probabilities in [0, 1], tables summing to 1 over known names.

        Raises:
            ValueError: on any violation.
        """
        for name in (
            "chinese_name_prob",
            "grant_revoked_prob",
            "duoshan_prob",
            "duoshan_transfer_prob",
            "handle_provider_prob",
            "handle_retype_prob",
            "user_real_name_prob",
            "avatar_provider_prob",
            "avatar_reupload_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value} is not a probability")
        tables: tuple[tuple[str, Mapping[str, float], tuple[str, ...]], ...] = (
            ("login_probs", self.login_probs, ("wechat", "qq", "none")),
            ("handle_provider_edits", self.handle_provider_edits, EDITS),
            ("handle_retype_edits", self.handle_retype_edits, EDITS),
            ("avatar_provider_edits", self.avatar_provider_edits, AVATAR_EDITS),
            ("avatar_reupload_edits", self.avatar_reupload_edits, AVATAR_EDITS),
        )
        for name, table, allowed in tables:
            unknown = set(table) - set(allowed)
            if unknown:
                raise ValueError(f"{name} has unknown keys {sorted(unknown)}")
            if any(p < 0 for p in table.values()) or abs(sum(table.values()) - 1.0) > 1e-9:
                raise ValueError(f"{name} must hold non-negative probabilities summing to 1")
