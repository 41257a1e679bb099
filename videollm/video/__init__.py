"""Video input: decode and sample frames with timestamps, streamed in chunks."""
from .decoders import StreamInfo, open_decoder
from .loader import Video, load_video
from .sampling import SamplingConfig, fps_indices, plan_indices, sample_indices, uniform_indices

__all__ = [
    "SamplingConfig",
    "StreamInfo",
    "Video",
    "fps_indices",
    "load_video",
    "open_decoder",
    "plan_indices",
    "sample_indices",
    "uniform_indices",
]
