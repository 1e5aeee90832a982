"""WebUI preload hook: EasyPhoto's command-line flags (the WebUI calls ``preload(parser)``
before it parses its arguments; the values appear as ``shared.cmd_opts.easyphoto_*``)."""

FACE_BACKENDS = ("auto", "lite", "full")  # easyphoto.params.FACE_BACKENDS (checked by a test)


def preload(parser):
    parser.add_argument("--easyphoto-data-dir", type=str, default=None,
                        help="EasyPhoto data folder (user ids, jobs, results); default "
                             "<outputs>/easyphoto or the EasyPhoto setting")
    parser.add_argument("--easyphoto-models-dir", type=str, default=None,
                        help="folder for EasyPhoto's own models (face, annotators); default "
                             "<models>/EasyPhoto. Checkpoints, LoRAs, ControlNets and VAEs always "
                             "go in the WebUI's own folders")
    parser.add_argument("--easyphoto-face-backend", type=str, default=None,
                        choices=FACE_BACKENDS,
                        help="face models: full, lite or auto (overrides the EasyPhoto setting)")
    parser.add_argument("--easyphoto-api-token", type=str, default=None,
                        help="bearer token required by EasyPhoto's HTTP routes (in addition to "
                             "--api-auth when that is set)")
