"""Does it fit? :mod:`.check` runs every check a device profile asks for: the exact TFLite Micro arena
(:mod:`.tflm`), Edge TPU op mapping (:mod:`.edgetpu`), MCU artifacts (:mod:`.mcu`), all read through
:mod:`.tflite_graph`."""
