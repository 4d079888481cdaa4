"""The contract between workstation and device: what both sides share, typed, with writers as well as readers.

- :mod:`~edgekit_agent.contract.errors`: the one exception hierarchy and its stable exit codes;
- :mod:`~edgekit_agent.contract.manifest`: the bundle's ``manifest.json`` (read and written here);
- :mod:`~edgekit_agent.contract.limits`: the hostile-input limits both sides enforce;
- :mod:`~edgekit_agent.contract.signing`: Ed25519 signatures over the manifest;
- :mod:`~edgekit_agent.contract.digest`: sha256 for bundle and OTA hashes, without OpenSSL.

The host package (``edgekit``) imports these; nothing here imports the host, TensorFlow or Keras.
"""
