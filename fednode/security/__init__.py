"""Identity, admission, signed envelopes, replay protection and the array wire codec."""

from fednode.security.arrays import Model, ModelSpec, decode_arrays, encode_arrays
from fednode.security.envelope import (ATTRIBUTABLE_REASONS, PROTOCOL_VERSION, REJECT_REASONS, SIG_DOMAIN,
                                       SPEC_DTYPES, Header, Message, MsgType, Reject, VerifyContext, open_envelope,
                                       seal)
from fednode.security.identity import (AllowList, Identity, IdentityError, peer_id_from_public_key, peer_id_hex,
                                       short_id)
from fednode.security.replay import OffenderTracker, ReplayGuard

__all__ = [
    "ATTRIBUTABLE_REASONS", "AllowList", "Header", "Identity", "IdentityError", "Message", "Model", "ModelSpec",
    "MsgType", "OffenderTracker", "PROTOCOL_VERSION", "REJECT_REASONS", "Reject", "ReplayGuard", "SIG_DOMAIN",
    "SPEC_DTYPES", "VerifyContext", "decode_arrays", "encode_arrays", "open_envelope", "peer_id_from_public_key",
    "peer_id_hex", "seal", "short_id",
]
