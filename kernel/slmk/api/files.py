"""Files for plugin authors: nothing half-written, locks, temporary names, the cache root, tree copies, fingerprints.

Also the small helpers about the environment a plugin runs in: installed package
versions, a package's data folder, environment variables set for a block.
"""

from __future__ import annotations

from ..environ import temporary_environ
from ..fsutil import (
    atomic_dir,
    atomic_file,
    cache_root,
    check_cache_folder,
    clean_stale_tmp,
    copy_tree,
    dir_size,
    file_lock,
    fingerprint_tree,
    hash_json,
    is_temp_name,
    link_or_copy_tree,
    remove_tree,
    temp_path,
    tree_entries,
    write_json_atomic,
    write_text_atomic,
)
from ..messages import installed_version, package_data_dir

__all__ = [
    "atomic_dir",
    "atomic_file",
    "cache_root",
    "check_cache_folder",
    "clean_stale_tmp",
    "copy_tree",
    "dir_size",
    "file_lock",
    "fingerprint_tree",
    "hash_json",
    "installed_version",
    "is_temp_name",
    "link_or_copy_tree",
    "package_data_dir",
    "remove_tree",
    "temp_path",
    "temporary_environ",
    "tree_entries",
    "write_json_atomic",
    "write_text_atomic",
]
