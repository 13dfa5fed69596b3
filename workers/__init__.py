"""Worker processes that read the shared-memory rings and subscribe to the ZeroMQ bus."""

from workers.events import AssetBalance, Candle, Message, MyAsset, MyOrder, Trade
from workers.supervisor import Supervisor, WorkerSpec
from workers.worker import Worker, WorkerError

__all__ = [
    "AssetBalance",
    "Candle",
    "Message",
    "MyAsset",
    "MyOrder",
    "Supervisor",
    "Trade",
    "Worker",
    "WorkerError",
    "WorkerSpec",
]
