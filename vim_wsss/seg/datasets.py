"""mmseg's ``PascalVOCDataset`` with the toolkit's checks, done once in the main process before any worker starts."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from mmseg.datasets import PascalVOCDataset
from mmseg.registry import DATASETS

from vim_wsss.data.voc import SPLIT_DIR, MissingFileError, read_name_list, split_path


@DATASETS.register_module()
class CheckedPascalVOCDataset(PascalVOCDataset):
    """``PascalVOCDataset`` whose split list is read as everywhere else in the toolkit (:func:`read_name_list`:
    DeepLab-style lines, ``train_aug`` / ``trainaug`` alias, duplicates rejected) and whose image and mask folders
    and listed files must exist (:class:`MissingFileError` naming them and the fix)."""

    def load_data_list(self) -> List[Dict]:
        img_dir, mask_dir = self.data_prefix.get('img_path'), self.data_prefix.get('seg_map_path')
        _check_folder(img_dir, 'image', 'point --data-root (or data_root) at VOCdevkit/VOC2012, the folder with '
                      'JPEGImages/, SegmentationClass[Aug]/ and ImageSets/Segmentation/')
        _check_folder(mask_dir, 'mask', 'pass --pseudo-dir (the make-pseudo output) or fix data_prefix.seg_map_path '
                      '(SegmentationClass / SegmentationClassAug under the data root)')
        self.ann_file = str(self._split_file())
        names = read_name_list(self.ann_file)
        data_list = [self._info(name, img_dir, mask_dir) for name in names]
        _check_listed(data_list, 'img_path', self.ann_file, 'restore them or remove their names from the list')
        _check_listed(data_list, 'seg_map_path', self.ann_file,
                      'make masks for every listed image (vim-wsss make-pseudo resumes) or point --pseudo-dir / '
                      'data_prefix.seg_map_path at the folder that has them')
        return data_list

    def _split_file(self) -> Path:
        """The split list, accepting ``train_aug.txt`` for ``trainaug.txt`` and back (as :func:`split_path`)."""
        path = Path(self.ann_file)
        root = path.parent.parent.parent
        if not path.is_file() and path.parent == root / SPLIT_DIR:
            return split_path(root, path.stem)  # MissingFileError naming the list if neither exists
        if not path.is_file():
            raise MissingFileError(f'split list {path} not found; expected one image name per line (check ann_file '
                                   f'in the config).')
        return path

    def _info(self, name: str, img_dir: str, mask_dir: Optional[str]) -> Dict:
        """mmseg's data-info dict of one image (as ``BaseSegDataset.load_data_list`` builds it)."""
        info = dict(img_path=str(Path(img_dir) / f'{name}{self.img_suffix}'), label_map=self.label_map,
                    reduce_zero_label=self.reduce_zero_label, seg_fields=[])
        if mask_dir is not None:
            info['seg_map_path'] = str(Path(mask_dir) / f'{name}{self.seg_map_suffix}')
        return info


def _check_folder(folder: Optional[str], what: str, fix: str) -> None:
    if folder is not None and not Path(folder).is_dir():
        raise MissingFileError(f'{what} folder {folder} not found; {fix}.')


def _check_listed(data_list: List[Dict], key: str, list_file: str, fix: str) -> None:
    """MissingFileError naming the first few listed files (``info[key]``) that do not exist."""
    missing = [info[key] for info in data_list if key in info and not Path(info[key]).is_file()]
    if missing:
        what = 'images' if key == 'img_path' else 'masks'
        raise MissingFileError(f'{len(missing)} of the {len(data_list)} {what} listed in {list_file} are missing '
                               f"(first: {', '.join(missing[:3])}); {fix}.")
