"""A bundle on the device: check it against its manifest and unpack it safely (:mod:`.archive`, the verifier
`edgekit inspect` and `edgekit sign` share), load it (:mod:`.load`), check its model file (:mod:`.tflite_file`)
and prove it computes what it computed on the workstation (:mod:`.selftest`)."""
