"""Association negotiation (PS3.8 9.3.2-9.3.4, PS3.7 D.3.3): what we accept
(``supported_contexts``), and the answer to an A-ASSOCIATE-RQ
(``negotiate``: the A-ASSOCIATE-AC and the accepted presentation contexts,
or why it is rejected), remembered per request body by ``Negotiator``.

pynetdicom does the PDU decoding and the context/role negotiation
(``pynetdicom.pdu``, ``negotiate_as_acceptor``); here is only our policy.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field

from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless)
from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import (AllStoragePresentationContexts, PresentationContext,
                                     negotiate_as_acceptor)

from ..retrieve import sending_syntax
from .pdu import APPLICATION_CONTEXT, our_user_information

__all__ = ["TRANSFER_SYNTAXES", "VERIFICATION", "FIND_MODELS", "MOVE_MODELS", "GET_MODELS",
           "STORAGE_COMMITMENT", "COMMITMENT_INSTANCE", "NOT_STORAGE", "supported_contexts",
           "Negotiation", "negotiate", "Negotiator"]

#: Accepted for storage and stored as received (PS3.5 Section 10).
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
]

VERIFICATION = "1.2.840.10008.1.1"
FIND_MODELS = {"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"}
MOVE_MODELS = {"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"}
GET_MODELS = {"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"}
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: The abstract syntaxes of ours that are not storage SOP classes.
NOT_STORAGE = FIND_MODELS | MOVE_MODELS | GET_MODELS | {VERIFICATION, STORAGE_COMMITMENT}

#: Negotiations remembered (Negotiator), and the longest A-ASSOCIATE-RQ
#: body remembered.
NEGOTIATION_MEMO_SIZE = 64
NEGOTIATION_MEMO_BYTES = 64 << 10


def supported_contexts() -> list[PresentationContext]:
    """What we accept: Verification; every storage SOP class in any of
    TRANSFER_SYNTAXES, in both roles (a C-GET SCU is the storage SCP on its
    own association); Patient/Study Root FIND, MOVE, GET; Storage Commitment
    Push Model (either role: the report may go either way)."""
    uncompressed = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    contexts = [build_context(VERIFICATION, uncompressed)]
    for cx in AllStoragePresentationContexts:
        storage = build_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        storage.scu_role = storage.scp_role = True
        contexts.append(storage)
    for model in sorted(FIND_MODELS | MOVE_MODELS | GET_MODELS):
        contexts.append(build_context(model, uncompressed))
    commitment = build_context(STORAGE_COMMITMENT, uncompressed)
    commitment.scu_role = commitment.scp_role = True
    contexts.append(commitment)
    return contexts


@dataclass(frozen=True)
class Negotiation:
    """What an A-ASSOCIATE-RQ gets (PS3.8 9.3.2-9.3.4, PS3.7 D.3.3): the
    A-ASSOCIATE-AC to send and the accepted presentation contexts, or why
    it is rejected (result, source, reason, log text), or why it is
    malformed."""

    calling: str = ""
    called: str = ""
    malformed: str = ""
    rejection: tuple[int, int, int, str] | None = None
    contexts: dict[int, PresentationContext] = field(default_factory=dict)
    max_pdu: int = 0
    proposed: int = 0
    ac: bytes = b""


def negotiate(body: bytes, supported: list[PresentationContext]) -> Negotiation:
    """Negotiate an association from the body of its A-ASSOCIATE-RQ with
    pynetdicom's PDU classes and ``negotiate_as_acceptor``: a pure function
    of the bytes (Negotiator remembers its answers)."""
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        request = pdu.to_primitive()
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        proposed = request.presentation_context_definition_list
    except Exception as exc:
        return Negotiation(malformed=str(exc) or exc.__class__.__name__)
    deal = Negotiation(calling=calling, called=called, proposed=len(proposed))
    if not pdu.protocol_version & 1:
        return dataclasses.replace(deal, rejection=(
            1, 2, 2, f"protocol version {pdu.protocol_version} not supported"))
    if str(request.application_context_name) != APPLICATION_CONTEXT:
        return dataclasses.replace(deal, rejection=(
            1, 1, 2, f"application context {request.application_context_name} not supported"))
    roles = {str(item.sop_class_uid): (item.scu_role, item.scp_role)
             for item in request.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    result, reply_roles = negotiate_as_acceptor(proposed, supported, roles)
    _choose_sending_syntaxes(result, proposed)
    contexts = {int(cx.context_id): cx for cx in result if cx.result == 0x00}
    if not contexts:
        offered = sorted({str(cx.abstract_syntax) for cx in proposed})
        return dataclasses.replace(deal, rejection=(
            1, 1, 1, "no acceptable presentation context (proposed "
            f"{', '.join(offered[:5])}{' …' if len(offered) > 5 else ''})"))
    reply = A_ASSOCIATE()
    reply.application_context_name = APPLICATION_CONTEXT
    reply.calling_ae_title = request.calling_ae_title
    reply.called_ae_title = request.called_ae_title
    reply.result = 0x00
    reply.result_source = 0x01
    reply.presentation_context_definition_results_list = result
    reply.user_information = [*our_user_information(), *reply_roles]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(reply)
    return dataclasses.replace(deal, contexts=contexts, ac=ac.encode(),
                               max_pdu=int(request.maximum_length_received or 0))


def _choose_sending_syntaxes(result: list[PresentationContext],
                             proposed: list[PresentationContext]) -> None:
    """On an accepted storage context where we are the SCU (a C-GET SCU's
    context for the C-STORE sub-operations), the transfer syntax is chosen
    by ``retrieve.sending_syntax`` — the peer's preference among what we can
    send — rather than by our order for receiving (pynetdicom's choice),
    so that stored bytes go out unchanged where the peer offered their
    syntax."""
    offered = {cx.context_id: cx.transfer_syntax for cx in proposed}
    for cx in result:
        if cx.result != 0x00 or not cx.as_scu or cx.abstract_syntax in NOT_STORAGE:
            continue
        ts = sending_syntax(offered.get(cx.context_id, []), TRANSFER_SYNTAXES)
        if ts is not None:
            cx.transfer_syntax = [UID(ts)]


class Negotiator:
    """``negotiate`` against our supported contexts, remembered: a tool that
    proposes every storage SOP class (storescu, getscu: 120 contexts and
    more) cost ~20 ms of pynetdicom's PDU decoding and negotiation per
    association, and sends the same request every time."""

    def __init__(self) -> None:
        self.contexts = supported_contexts()
        self._negotiated: dict[bytes, Negotiation] = {}

    def __call__(self, body: bytes) -> Negotiation:
        if len(body) > NEGOTIATION_MEMO_BYTES:
            return negotiate(body, self.contexts)
        deal = self._negotiated.get(body)
        if deal is None:
            deal = negotiate(body, self.contexts)
            if len(self._negotiated) >= NEGOTIATION_MEMO_SIZE:
                self._negotiated.pop(next(iter(self._negotiated)))
            self._negotiated[body] = deal
        return deal
