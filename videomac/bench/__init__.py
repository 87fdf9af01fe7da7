"""Benchmarks (``videomac bench``): pretraining step throughput/memory per sparse backend, and label
propagation speed.

``videomac bench pretrain`` times one full train step (forward + backward + AdamW step + EMA update:
:func:`videomac.pretrain.step.train_step`, the step ``videomac pretrain`` runs) of the same batch
under four configurations per encoder, side by side in one run:

- ``visible``: VideoMAC with ``backend='visible'`` (pointwise layers on visible positions only);
- ``masked``: VideoMAC with ``backend='masked'`` (every layer dense, masked positions zeroed);
- ``visible_r0``: the visible path with nothing masked (separates implementation effects from sparsity);
- ``dense``: the plain timm encoder on unmasked frames + the same decoder, EMA target and losses;

plus one ``vit_s16_siammae`` row: a siamese MAE step on timm's ``vit_small_patch16_224`` that
encodes only the visible tokens of both frames (shared encoder, 2-block 256-d decoder, MSE on masked
patches, no EMA). Peak memory: each configuration runs in its own process forked from a fresh
server process (``multiprocessing`` 'forkserver'); on CPU it is the rise of the process's max RSS
(``getrusage``) over its RSS just before the first step, i.e. optimizer state, gradients and
activations; on CUDA it is ``torch.cuda.max_memory_allocated`` over the allocation before the
first step. ``TFLOP/s``: the encoders' conv/linear FLOPs of the step (online forward + backward, target
forward; visible positions only for ``visible``) per second, for an MFU estimate against the device's
peak. ``--profile DIR`` adds torch.profiler tables and, on CUDA, kernel launches and device busy time
per step.
"""

__all__ = ["DEFAULT_MODELS", "QUICK_MODELS", "CONFIGS", "VIT"]

DEFAULT_MODELS = ["videomac_rn18", "videomac_rn50", "videomac_cnxv2_t", "videomac_cnxv2_s"]
QUICK_MODELS = ["videomac_cnxv2_atto", "videomac_rn18"]
CONFIGS = ["visible", "masked", "visible_r0", "dense"]
VIT = "vit_s16_siammae"
