import torch

from acdc_lite.task import Task


def test_task_repr_is_one_short_line_without_tensors():
    clean = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    task = Task("toy", clean, clean.flip(1), torch.tensor([[3], [7]]), attention_mask=clean != 0)
    assert repr(task) == ("Task('toy', examples=2, tokens=4, metric='logit_diff', answers_per_example=1, foils=no, "
                          "padding=right (1 pad tokens))")
