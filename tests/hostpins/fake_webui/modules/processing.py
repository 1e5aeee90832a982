"""Generation is not part of this fake: the classes exist, ``process_images`` refuses."""


class StableDiffusionProcessing:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    pass


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    pass


def process_images(p):
    raise RuntimeError("the fake WebUI of tests/hostpins does not generate images")
