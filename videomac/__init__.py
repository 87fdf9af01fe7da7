"""VideoMAC: masked video modeling with sparse ConvNets (CVPR 2024).

``import videomac`` registers the encoders with timm (``timm.create_model('videomac_rn50')``).
"""

from videomac import masking
from videomac.models import SparseEncoder, register_sparse_container
from videomac.pretrain.model import VideoMAC
from videomac.version import __version__

__all__ = ["SparseEncoder", "VideoMAC", "masking", "register_sparse_container", "__version__"]
