"""Who may do what on the mirror: read, browse and subscribe; nothing else, ever.

Three locks, each enough on its own (docs/ARCHITECTURE.md, "Traps in our dependencies": the admin backdoor):

1. `ReadOnlyRuleset` is checked by asyncua for every request on every secure
   channel, before the service runs: HistoryUpdate, AddNodes, DeleteNodes,
   AddReferences and DeleteReferences are refused with BadUserAccessDenied
   whoever asks, "admin" included. Write and Call pass it, to be refused item by
   item (BadNotWritable, BadUserAccessDenied) by the mirror's own services
   (agent/opcua/services.py), as standard clients expect: a service-level
   refusal made them abort the whole request.
2. `ReadOnlyUserManager` never hands out the Admin role (asyncua's default
   manager makes anyone called "admin" an Admin without a password, and Admin
   bypasses AccessLevel and may add and delete nodes); remote admin is off too.
3. Every mirrored variable is built without write bits, methods are not
   executable and have no callback.
"""

from __future__ import annotations

import hmac
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole

from agent.opcua.ua import node_id

_O = ua.ObjectIds
READ_ONLY_REQUESTS = frozenset(node_id(i) for i in (
    _O.CreateSessionRequest_Encoding_DefaultBinary,
    _O.CloseSessionRequest_Encoding_DefaultBinary,
    _O.ActivateSessionRequest_Encoding_DefaultBinary,
    _O.CloseSecureChannelRequest_Encoding_DefaultBinary,
    _O.GetEndpointsRequest_Encoding_DefaultBinary,
    _O.FindServersRequest_Encoding_DefaultBinary,
    _O.ReadRequest_Encoding_DefaultBinary,
    _O.HistoryReadRequest_Encoding_DefaultBinary,
    _O.WriteRequest_Encoding_DefaultBinary,  # refused per item: agent/opcua/services.py
    _O.CallRequest_Encoding_DefaultBinary,   # refused per item: agent/opcua/services.py
    _O.BrowseRequest_Encoding_DefaultBinary,
    _O.BrowseNextRequest_Encoding_DefaultBinary,
    _O.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary,
    _O.RegisterNodesRequest_Encoding_DefaultBinary,
    _O.UnregisterNodesRequest_Encoding_DefaultBinary,
    _O.CreateSubscriptionRequest_Encoding_DefaultBinary,
    _O.ModifySubscriptionRequest_Encoding_DefaultBinary,
    _O.DeleteSubscriptionsRequest_Encoding_DefaultBinary,
    _O.TransferSubscriptionsRequest_Encoding_DefaultBinary,
    _O.SetPublishingModeRequest_Encoding_DefaultBinary,
    _O.CreateMonitoredItemsRequest_Encoding_DefaultBinary,
    _O.ModifyMonitoredItemsRequest_Encoding_DefaultBinary,
    _O.DeleteMonitoredItemsRequest_Encoding_DefaultBinary,
    _O.SetMonitoringModeRequest_Encoding_DefaultBinary,
    _O.PublishRequest_Encoding_DefaultBinary,
    _O.RepublishRequest_Encoding_DefaultBinary,
))


class ReadOnlyRuleset(SimpleRoleRuleset):
    """Allows only the services that cannot change anything, for every user (a
    SimpleRoleRuleset only because asyncua's signature asks for one)."""

    def check_validity(self, user: Any, action_type_id: ua.NodeId, body: Any) -> bool:
        return action_type_id in READ_ONLY_REQUESTS


class ReadOnlyUserManager:
    """Anonymous (if allowed) and configured users, all with the plain User role."""

    def __init__(self, allow_anonymous: bool, users: dict[str, str]) -> None:
        self.allow_anonymous = allow_anonymous
        self.users = dict(users)

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:  # anonymous (X509 user tokens are not offered)
            return User(role=UserRole.User, name="anonymous") if self.allow_anonymous else None
        expected = self.users.get(username)
        if expected is None or password is None:
            return None
        given = password if isinstance(password, bytes) else str(password).encode()
        if not hmac.compare_digest(expected.encode(), given):
            return None
        return User(role=UserRole.User, name=username)
