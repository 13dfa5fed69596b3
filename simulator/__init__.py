"""An Upbit-compatible exchange simulator: default upstream of the demo, tests and benchmarks.

It behaves like Upbit as described in ``shared/upbit/SPEC.md``, including the parts
that hurt clients. Run it with ``python -m simulator serve`` (prints one JSON line
with ``public_url``, ``private_url``, ``rest_url`` and ``control_url``, serves until
SIGINT/SIGTERM) or in-process::

    with Simulator(markets=20, rate=1000.0, seed=1) as sim:
        sim.public_url, sim.control.journal(), sim.markets

Endpoints
    ``/websocket/v1`` and ``/websocket/v1/private`` (one port), REST under ``rest_url``
    (``/v1/market/all``, ``/v1/ticker``, ``/v1/ticker/all``, ``/v1/orderbook``,
    ``/v1/orderbook/instruments``, ``/v1/trades/ticks``, ``POST /v1/orders``,
    ``GET|DELETE /v1/order``, ``GET /v1/accounts``), and the control API under
    ``control_url`` (its own port, so it stays up during a ``restart`` fault; routes
    in :mod:`simulator.control_api`, blocking client :class:`ControlClient`).

Market data
    ``rate`` is market events per second across all markets. Each event is one
    trade in one market (busier markets are picked more often); it updates that
    market's trade, ticker, orderbook and candle streams, so a client subscribed to
    T of those types for every market receives about T x ``rate`` frames per second
    (candles at most once per second per market and unit, as Upbit pushes them).
    Each event is sent when it is due, at most one wake-up per 0.2 ms (a timerfd:
    asyncio's own timers round to whole milliseconds and would send events in
    clumps); above 5000 events per second several share a write.
    Events, markets, sides, prices and sizes are deterministic for a seed; times are
    the wall clock. ``sequential_id`` is ``trade_timestamp * 10000 + n`` (above 2^53,
    some odd). Frames are binary, UTF-8 JSON, DEFAULT / SIMPLE / JSON_LIST /
    SIMPLE_LIST; compressed (permessage-deflate) only for a client that offers it.
    With ``stamp`` every market-data frame ends with
    ``"sim_ns": <time.time_ns() when written>``; without it the field set is Upbit's.
    Burst mode (control ``burst``) writes pre-built frames for a client's
    subscription straight to its socket, for throughput benchmarks (:mod:`simulator.burst`).

Assumptions where SPEC.md leaves Upbit's behaviour unconfirmed
    * Rate limits on the WebSocket: more than 5 new connections per second from one
      address -> HTTP 429 at the handshake. More than 5 requests per second or 100
      per minute on a connection -> error frame
      ``{"error":{"name":"TOO_MANY_REQ","message":...}}`` then close code 1000 after
      ``error_close_delay`` (0.15 s, as the probe saw after errors). SPEC lists only
      "Too Many Requests" as a condition; ``TOO_MANY_REQ`` follows the upper-case
      style of every confirmed error name. A handshake with an ``Origin`` header puts
      the connection under 1 request per 10 s, and Origin handshakes from one address
      under 1 connection per 10 s. Text ``PING`` is not counted as a request.
      Every violation is journaled.
    * Private endpoint: the handshake is accepted whatever the ``Authorization``
      header; a missing or invalid JWT, a wrong access key or a reused nonce is
      answered on the first request with ``INVALID_AUTH`` and a close. HS512 and
      HS256 are accepted. Private types on the public endpoint -> ``INVALID_AUTH``;
      public types on the private endpoint -> ``INVALID_PARAM``.
    * Keepalive: the server never pings; protocol pings are answered; text ``PING``
      is answered with ``{"status":"UP"}`` at once and then every
      ``status_interval`` (10 s). A connection with no bytes either way for
      ``idle_timeout`` (120 s, the documented value) is dropped without a close frame.
    * REST: 429 with the plain-text body ``Too many API requests.``; after more than
      ``rest_teapot_after`` 429s within 10 s, 418 for ``rest_block_seconds``, doubled
      on each repeat. ``Remaining-Req`` on every answer.
    * Unknown or lower-case codes and unsupported orderbook levels give no frame and
      no error; an unsupported ``.N`` depth gives 30 units.
    * Accumulated day values (``acc_*``) never reset at 00:00 UTC.
    * A client whose socket buffers more than ``max_write_buffer`` bytes is dropped
      as a slow consumer (journal reason ``slow_consumer``).
"""

from simulator.app import Simulator
from simulator.control import ControlClient, ControlError
from simulator.server import SimulatorConfig

__all__ = ["ControlClient", "ControlError", "Simulator", "SimulatorConfig"]
