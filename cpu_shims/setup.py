"""Ships `sglang_focus_cpu_compat.pth` at the top of site-packages, where Python's `site` module runs it."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "sglang_focus_cpu_compat.pth"


class BuildWithPth(build_py):
    def run(self):
        super().run()
        source = Path(__file__).parent / PTH_NAME
        self.copy_file(str(source), str(Path(self.build_lib) / PTH_NAME))


setup(cmdclass={"build_py": BuildWithPth})
