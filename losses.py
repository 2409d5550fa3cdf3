"""Losses, one pure function of tensors each.

A loss takes the predictor outputs and the targets, one tensor per mask configuration, and
returns a scalar. To try another loss, write a function here with the same signature and pass
its name: `python train.py --loss my_loss`.
"""
import torch


def vjepa_l1(preds, targets):
    """V-JEPA loss (Bardes et al. 2024, eq. 1 with the L1 distance of sec. 3.1):

        L = 1/M sum_m  mean_{k in target_m, c} | P(z_m)_{k,c} - sg(LN(E_bar(x)))_{k,c} |

    preds, targets: lists over the M mask configurations of [B, K_m, D] tensors (the targets
    already layer-normed and without gradient). Each mask's mean is over its target tokens and
    channels; the masks then count equally."""
    per_mask = [(p.float() - t.float()).abs().mean() for p, t in zip(preds, targets)]
    return torch.stack(per_mask).mean()
