"""InterFaceGAN client: generated API stubs (interfacegan.v1) and a small SDK.

    from interfacegan import Client
    with Client("127.0.0.1:50051") as client:
        result = client.edit(seed=7, edits=["age:-3:3:7"], rescore=True)
        result.grid(score="age").save("age.png")

`interfacegan.aio.AsyncClient` is the asyncio twin; `ifgan` is the command line.
"""

from ._requests import ApiError
from .channel import ChannelConfig, RetryPolicy
from .client import Client
from .edits import EditFrame, EditResult, EditSpec

__all__ = ["ApiError", "ChannelConfig", "Client", "EditFrame", "EditResult", "EditSpec", "RetryPolicy"]
__version__ = "1.0.0"
