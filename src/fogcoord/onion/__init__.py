"""Onion routing: relays, circuits and hidden services.

A Tor-style onion-routing network at small scale, on asyncio and TCP, following Tor's
specification (tor-spec.txt) for the parts that make anonymity work: fixed 514-byte cells,
the ntor handshake, telescoping circuits built with CREATE2/EXTEND2, layered AES-128-CTR with
running SHA-1 digests, RELAY_EARLY limits, SENDME flow control and DESTROY. It leaves out what
only matters on the public Tor network: TLS link handshakes (VERSIONS/CERTS/NETINFO), the TAP
and CREATE_FAST handshakes, RSA identities, and multiple directory authorities.

Python has no maintained implementation of Tor's relay or client protocol, so this one is
written by hand on the primitives of the ``cryptography`` package (X25519, Ed25519, AES-CTR,
SHA-1/SHA-256, HMAC and HKDF); the ntor handshake is checked against a published test vector.

* :mod:`.cells` -- cell and relay-cell formats, strict parsing (:class:`~.cells.CellError`);
* :mod:`.ntor` -- the ntor handshake and key expansion;
* :mod:`.relaycrypto` -- per-hop onion layers and the "recognized" check;
* :mod:`.identity`, :mod:`.policy` -- relay keys, exit policies;
* :mod:`.link`, :mod:`.streams` -- cell framing over TCP; streams and SENDME windows;
* :mod:`.relay` -- :class:`~.relay.Relay`, with a registry for extra relay commands;
* :mod:`.directory` -- the signed consensus, the authority and path selection;
* :mod:`.client` -- :class:`~.client.OnionClient` and its circuits; :mod:`.socks` -- SOCKS5;
* :mod:`.hsaddr`, :mod:`.descriptor`, :mod:`.hashring` -- hidden-service naming and directories.
"""
