"""A bundle on the device: unpack and verify it (:mod:`.load`), check its model file (:mod:`.tflite_file`) and
prove it computes what it computed on the workstation (:mod:`.selftest`)."""
