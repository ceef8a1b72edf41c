"""The node's DIMSE face: our own asyncio upper layer (``server.py``,
``association.py``, ``pdu.py``) with one handler module per service
(``echo``, ``store``, ``find``, ``move_get``, ``commitment``); see ``scp.py``
for what ``serve`` starts.  pynetdicom only decodes A-ASSOCIATE PDUs and
negotiates presentation contexts."""
