"""Typed identifiers.

``NewType`` aliases cost nothing at run time and let mypy catch an app id passed where a provider
id was expected.
"""

from __future__ import annotations

from typing import NewType

ProviderId = NewType("ProviderId", str)  # open platform: "wechat", "qq"
AppId = NewType("AppId", str)  # client app / relying party: "douyin", "duoshan"
ControllerId = NewType("ControllerId", str)  # legal entity (PIPL personal information handler)
SubjectId = NewType("SubjectId", int)  # data subject: a user of the platform (graph node id)
GrantId = NewType("GrantId", str)
OpenId = NewType("OpenId", str)  # per (provider, app) subject id
UnionId = NewType("UnionId", str)  # per (provider, developer account) subject id
InstrumentId = NewType("InstrumentId", str)
RuleId = NewType("RuleId", str)
