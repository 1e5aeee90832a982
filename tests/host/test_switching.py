"""The GPU lock, checkpoint and VAE switching against the fake WebUI.

Proves: ``HostGpuLock`` takes ``queue_lock`` once per job (re-entrant on its thread, exclusive
across threads), brackets the job with ``state.begin``/``end`` and restores every setting it
changed at the outermost release — even when a restore fails; a checkpoint switch inside the
lock sets the option with ``run_callbacks=False`` and reloads explicitly (the fake's option
handler raises where the real host would deadlock), Forge uses ``checkpoint_change``; the user's
checkpoint and VAE come back at the end of the job (1.6 without a saved ``sd_vae`` gets
"Automatic", Forge its module list); SDXL txt2img switches to an SDXL checkpoint and the next
inpaint back; unknown checkpoints / VAEs and wrong families are clear errors before any call.
"""

from __future__ import annotations

import threading

import pytest
from host_helpers import control_images, square_mask

from easyphoto.engine.base import Generation
from easyphoto.engine.webui import HostGpuLock
from easyphoto.engine.webui_engine import WebUIEngine
from easyphoto.errors import InvalidRequest, ModelUnavailable

H, W = 64, 96
VAE = "vae-ft-mse-840000-ema-pruned.safetensors"


def inpaint(engine):
    generation = Generation("a face", "", 20, 7.0, "Euler a", 1)
    return engine.inpaint(control_images(count=1)[0], square_mask(), 0.3, generation)


def test_lock_is_reentrant_and_brackets_the_job(fake):
    lock, state = HostGpuLock(fake.host), fake.shared.state
    queue_lock = fake.call_queue.queue_lock
    restored = []
    with lock:
        with lock:
            lock.remember("x", 1, restored.append)
            lock.remember("x", 2, restored.append)   # the first original wins
        assert queue_lock.locked() and restored == [] and lock.original("x") == 1
    assert not queue_lock.locked() and restored == [1] and lock.original("x") is None
    assert state.events == [("begin", "easyphoto", True), ("end", "easyphoto")]
    with pytest.raises(RuntimeError, match="holding the GPU lock"):
        lock.remember("y", 0, restored.append)


def test_lock_excludes_other_threads_and_survives_a_failed_restore(fake):
    lock = HostGpuLock(fake.host)
    entered = threading.Event()

    def other():
        with lock:
            entered.set()

    def fail(_):
        raise OSError("restore failed")

    with lock:
        lock.remember("broken", 0, fail)
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.2)   # blocked while this job holds the lock
    thread.join(2)
    assert entered.is_set() and not fake.call_queue.queue_lock.locked()


@pytest.mark.parametrize("case", ["a1111-1.6", "a1111-1.9", "a1111-1.10"])
def test_checkpoint_switch_without_deadlock(make_host, case):
    fake = make_host(case)
    original, other = fake.checkpoints["sd15"], fake.checkpoints["sd15b"]
    lock = HostGpuLock(fake.host)
    engine = WebUIEngine(fake.host, lock, checkpoint="other15")
    with lock:
        inpaint(engine)
        inpaint(engine)
    assert [c["checkpoint"] for c in fake.calls] == [other.title] * 2
    assert [c["loaded"] for c in fake.calls] == [other.title] * 2
    sets = [c for c in fake.shared.opts.set_calls if c[0] == "sd_model_checkpoint"]
    assert sets == [("sd_model_checkpoint", other.title, False, True),
                    ("sd_model_checkpoint", original.title, False, True)]   # switch, restore
    assert all(held for event, held in fake.sd_models.events if event == "reload")
    assert fake.shared.opts.data["sd_model_checkpoint"] == original.title
    assert fake.sd_models.model_data.sd_model.sd_checkpoint_info is original


def test_forge_switches_through_checkpoint_change(make_host):
    fake = make_host("forge")
    original, other = fake.checkpoints["sd15"], fake.checkpoints["sd15b"]
    engine = WebUIEngine(fake.host, HostGpuLock(fake.host), checkpoint=other.filename)
    inpaint(engine)   # the engine takes the lock itself: restored right after the call
    assert fake.calls[-1]["checkpoint"] == other.title
    assert fake.main_entry.events == [("checkpoint_change", other.title, False, True),
                                      ("checkpoint_change", original.title, False, True)]
    assert fake.shared.opts.data["sd_model_checkpoint"] == original.title


def test_unknown_checkpoint_and_registry_role(fake):
    for name in ("no_such_model", "sd15_base"):
        engine = WebUIEngine(fake.host, HostGpuLock(fake.host), checkpoint=name)
        with pytest.raises(ModelUnavailable, match="Stable-diffusion"):
            inpaint(engine)
    assert fake.calls == []


def test_sdxl_txt2img_then_inpaint_in_one_job(fake):
    sd15, sdxl = fake.checkpoints["sd15"], fake.checkpoints["sdxl"]
    lock = HostGpuLock(fake.host)
    engine = WebUIEngine(fake.host, lock)
    with lock:
        template = engine.txt2img((W, H), Generation("a room", "", 30, 7.0, "Euler a", 2))
        inpaint(engine)
    assert template.shape == (H, W, 3)
    assert [c["checkpoint"] for c in fake.calls] == [sdxl.title, sd15.title]
    assert type(fake.calls[0]["p"]).__name__ == "StableDiffusionProcessingTxt2Img"
    assert fake.shared.opts.data["sd_model_checkpoint"] == sd15.title


def test_wrong_family_is_refused(make_host):
    fake = make_host("a1111-1.10", opts={"sd_model_checkpoint": "sd_xl_base_1.0"})
    with pytest.raises(InvalidRequest, match="SDXL checkpoint but this step needs an SD1.5"):
        inpaint(WebUIEngine(fake.host, HostGpuLock(fake.host)))
    assert fake.calls == []


@pytest.mark.parametrize("case, saved, restored", [
    ("a1111-1.6", None, "Automatic"), ("a1111-1.10", "other.vae.pt", "other.vae.pt")])
def test_vae_switch_and_restore(make_host, case, saved, restored):
    fake = make_host(case, opts={"sd_vae": saved} if saved else {})
    assert ("sd_vae" in fake.shared.opts.data) is bool(saved)
    fake.sd_vae.vae_dict.update({VAE: "/x/" + VAE, "other.vae.pt": "/x/other.vae.pt"})
    lock = HostGpuLock(fake.host)
    with lock:
        inpaint(WebUIEngine(fake.host, lock, vae=VAE))
    assert fake.calls[-1]["vae"] == VAE and fake.calls[-1]["stored"] == {}
    assert fake.shared.opts.data["sd_vae"] == restored
    assert fake.sd_vae.events == [("reload", VAE, True), ("reload", restored, True)]
    vae_sets = [c for c in fake.shared.opts.set_calls if c[0] == "sd_vae"]
    assert all(run_callbacks is False and held for _, _, run_callbacks, held in vae_sets)


def test_forge_vae_through_its_module_list(make_host):
    fake = make_host("forge", opts={"forge_additional_modules": ["/m/VAE/old.safetensors"]})
    fake.main_entry.module_list.update({VAE: "/m/VAE/" + VAE,
                                        "old.safetensors": "/m/VAE/old.safetensors"})
    inpaint(WebUIEngine(fake.host, HostGpuLock(fake.host), vae=VAE))
    assert fake.calls[-1]["modules"] == ["/m/VAE/" + VAE]
    assert fake.shared.opts.data["forge_additional_modules"] == ["/m/VAE/old.safetensors"]


def test_unknown_vae(make_host):
    fake = make_host("a1111-1.10")
    with pytest.raises(ModelUnavailable, match="VAE"):
        inpaint(WebUIEngine(fake.host, HostGpuLock(fake.host), vae="missing.safetensors"))
    assert fake.calls == [] and ("refresh",) in fake.sd_vae.events
    assert fake.shared.opts.data.get("sd_vae", "Automatic") == "Automatic"
