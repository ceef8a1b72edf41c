"""The requestor's A-ASSOCIATE PDUs (dimse/acse.py), checked against an
independent codec: the A-ASSOCIATE-RQ we write is what pynetdicom reads,
and the A-ASSOCIATE-AC / -RJ pynetdicom writes is what we read (accepted
contexts, the syntax chosen, roles granted, the peer's maximum PDU)."""

from __future__ import annotations

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (A_ASSOCIATE, MaximumLengthNotification,
                                       SCP_SCU_RoleSelectionNegotiation)
from pynetdicom.presentation import PresentationContext, build_context

from pacsnode.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsnode.dimse.acse import (Context, a_associate_rq, proposal, read_answer,
                                 read_rejection)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT, IMPLICIT, J2K = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90"


def test_our_request_reads_back_in_pynetdicom() -> None:
    proposed = proposal([Context(None, CT, [EXPLICIT, IMPLICIT]), build_context(MR, [J2K])],
                        scp_roles=[MR])
    raw = a_associate_rq("ORTHANC", "PACSNODE", proposed, [MR], 131072)
    rq = A_ASSOCIATE_RQ()
    rq.decode(raw)
    primitive = rq.to_primitive()
    assert primitive.called_ae_title == "ORTHANC"
    assert primitive.calling_ae_title == "PACSNODE"
    assert primitive.application_context_name == "1.2.840.10008.3.1.1.1"
    contexts = primitive.presentation_context_definition_list
    assert [(cx.context_id, cx.abstract_syntax, list(cx.transfer_syntax)) for cx in contexts] == [
        (1, CT, [EXPLICIT, IMPLICIT]), (3, MR, [J2K])]
    items = {type(item).__name__: item for item in primitive.user_information}
    assert items["MaximumLengthNotification"].maximum_length_received == 131072
    assert items["ImplementationClassUIDNotification"].implementation_class_uid == \
        IMPLEMENTATION_CLASS_UID
    assert items["ImplementationVersionNameNotification"].implementation_version_name == \
        IMPLEMENTATION_VERSION_NAME
    role = items["SCP_SCU_RoleSelectionNegotiation"]
    assert (role.sop_class_uid, role.scu_role, role.scp_role) == (MR, False, True)


def _ac(results: list[tuple[int, int, str]], roles: list[tuple[str, bool, bool]],
        max_pdu: int) -> bytes:
    """An A-ASSOCIATE-AC body as pynetdicom writes it (after the 6-byte header)."""
    answer = A_ASSOCIATE()
    answer.application_context_name = "1.2.840.10008.3.1.1.1"
    answer.calling_ae_title = "PACSNODE"
    answer.called_ae_title = "ORTHANC"
    answer.result = 0
    contexts = []
    for context_id, result, syntax in results:
        cx = PresentationContext()
        cx.context_id = context_id
        cx.result = result
        cx.transfer_syntax = [syntax]
        contexts.append(cx)
    answer.presentation_context_definition_results_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    items: list[object] = [length]
    for uid, scu, scp in roles:
        item = SCP_SCU_RoleSelectionNegotiation()
        item.sop_class_uid = uid
        item.scu_role, item.scp_role = scu, scp
        items.append(item)
    answer.user_information = items  # type: ignore[assignment]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(answer)
    return bytes(ac.encode()[6:])


def test_we_read_pynetdicoms_answer() -> None:
    proposed = proposal([Context(None, CT, [EXPLICIT, IMPLICIT]), Context(None, CT, [J2K]),
                         Context(None, MR, [EXPLICIT])], scp_roles=[MR])
    body = _ac([(1, 0, IMPLICIT), (3, 3, J2K), (5, 0, EXPLICIT)], [(MR, False, True)], 16384)
    answer = read_answer(body, proposed)
    assert answer.max_pdu == 16384
    assert sorted(answer.accepted) == [1, 5]  # 3 refused (transfer syntax not supported)
    ct, mr = answer.accepted[1], answer.accepted[5]
    assert (ct.abstract_syntax, ct.transfer_syntax, ct.as_scu, ct.as_scp) == (
        CT, [IMPLICIT], True, False)
    assert (mr.abstract_syntax, mr.transfer_syntax, mr.as_scu, mr.as_scp) == (
        MR, [EXPLICIT], False, True)
    # The acceptor may refuse the role we asked for (SCP): we do not get it,
    # nor the one we did not ask for.
    refused = read_answer(_ac([(5, 0, EXPLICIT)], [(MR, True, False)], 0), proposed)
    assert (refused.accepted[5].as_scu, refused.accepted[5].as_scp) == (False, False)
    assert refused.max_pdu == 0


def test_a_rejection_in_words() -> None:
    rj = A_ASSOCIATE_RJ()
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = 1, 1, 7
    rj.from_primitive(primitive)
    why = read_rejection(bytes(rj.encode()[6:]))
    assert (why.result, why.source, why.reason) == (
        "Rejected Permanent", "Service User", "Called AE title not recognised")
    assert read_rejection(b"\x00\x02\x03\x02").reason == "Local limit exceeded"
