"""edgekit_agent: the device side — verify a bundle, run it with LiteRT / tflite-runtime, benchmark it, and
report latency and accuracy telemetry over MQTT without losing data when the broker goes away.

Needs only numpy, Pillow, paho-mqtt and one TFLite interpreter; never imports TensorFlow or ``edgekit``.
"""

__version__ = "0.1.0"
