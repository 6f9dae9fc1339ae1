"""HFDataModule as a contract: the shared arguments live once in its ``__init__``, each data
module declares only its own and passes the rest on, and what a subclass must define is abstract."""

import inspect

import pytest

from nat_lightning.data import (
    HFImageDataModule,
    HFSegmentationDataModule,
    quickstart_datamodule,
    shapes_datamodule,
)
from nat_lightning.data.base import HFDataModule
from nat_lightning.data.digits import QUICKSTART
from nat_lightning.data.shapes import SHAPES_QUICKSTART
from nat_lightning.task_choice import init_arguments

SHARED = [n for n in inspect.signature(HFDataModule.__init__).parameters if n != "self"]
# what each data module declares although HFDataModule does: the one positional argument (its
# None is the module's own embedded dataset) and the arguments whose defaults differ
REDECLARED = {
    HFImageDataModule: {"dataset"},
    HFSegmentationDataModule: {"dataset", "batch_size"},
}


def own_arguments(cls) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]


@pytest.mark.parametrize("cls", [HFImageDataModule, HFSegmentationDataModule])
def test_a_data_module_declares_its_own_arguments_and_passes_the_rest_on(cls):
    params = inspect.signature(cls.__init__).parameters
    assert any(p.kind is p.VAR_KEYWORD for p in params.values())
    own = own_arguments(cls)
    assert len(SHARED) == 25 and len(own) <= 14, own  # 9 for images, 14 for segmentation
    assert set(own) & set(SHARED) == REDECLARED[cls]
    assert init_arguments(cls) == own + [n for n in SHARED if n not in own]


@pytest.mark.parametrize("cls", [HFImageDataModule, HFSegmentationDataModule])
def test_hparams_hold_every_argument_with_its_default(cls):
    dm = cls()
    assert set(dm.hparams) == set(init_arguments(cls))
    defaults = {
        **{n: p.default for n, p in inspect.signature(HFDataModule.__init__).parameters.items()},
        **{n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()},
    }
    for name in init_arguments(cls):
        if name not in cls.PREPROCESSING:  # resolved: the built-in values
            assert dm.hparams[name] == defaults[name], name
    assert {k: dm.hparams[k] for k in cls.PREPROCESSING} == cls.PREPROCESSING


def test_given_arguments_reach_hparams_through_kwargs():
    dm = HFSegmentationDataModule("some/folder", crop_size=32, seed=3, hflip=0.25, batch_size=5)
    hp = dm.hparams
    assert (hp.dataset, hp.crop_size, hp.seed, hp.hflip, hp.batch_size) == (
        "some/folder",
        32,
        3,
        0.25,
        5,
    )
    with pytest.raises(ValueError, match=r"hflip=1.5: expected a probability in \[0, 1\]"):
        HFImageDataModule(hflip=1.5)
    with pytest.raises(TypeError, match="typo"):
        HFImageDataModule(typo=1)


def test_embedded_is_the_quickstart_data():
    image, seg = quickstart_datamodule(seed=4), shapes_datamodule(seed=4)
    assert image.hparams.seed == seg.hparams.seed == 4
    for dm, settings in ((image, QUICKSTART), (seg, SHAPES_QUICKSTART)):
        assert dm.hparams.dataset is None and dm.dataset == type(dm).EMBEDDED_DATASET
        for key, value in settings.items():
            assert dm.hparams[key] == value, key
    assert dict(HFSegmentationDataModule.embedded().hparams) == dict(shapes_datamodule().hparams)


def test_what_a_subclass_must_define_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        HFDataModule()

    class NoCollate(HFImageDataModule):
        _collate = HFDataModule._collate

    with pytest.raises(TypeError, match="_collate"):
        NoCollate()
    assert HFDataModule.__abstractmethods__ == {
        "embedded",
        "columns",
        "_kept_columns",
        "_decoder",
        "_unlabelled_decoder",
        "_collate",
    }
    defined = dict.fromkeys(HFDataModule.__abstractmethods__)  # every method, but no dataset
    with pytest.raises(TypeError, match="must set EMBEDDED_DATASET"):
        type("NoDataset", (HFDataModule,), defined)
