"""HL7 v2 over MLLP: the listener (:mod:`.mllp`) and the message mapping (:mod:`.messages`)
onto :class:`dicomhub.services.orders.OrderService`."""
