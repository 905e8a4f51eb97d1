'use strict';
// Electron main process: spawn the llama-worker and bridge it to the renderer
// over a MessagePort, the shape of the original LlamaWorker design.
//
//   renderer (index.html + renderer.js)
//      |  MessagePort (chunks, done, errors; generate/abort/reset)
//   bridge.js: LlamaWorkerClient + port server
//      |  in this process (default), or in a utility process (LLAMA_HOST_MODE=utility)
//   llama-worker child process (stdin/stdout frames, stderr drained)
//
// Where the worker is: LLAMA_WORKER_COMMAND (e.g. "llama-worker" on the PATH,
// or a full path to a venv's llama-worker), else LLAMA_WORKER_PYTHON with
// `-m worker`, else python3/python with `-m worker`. A packaged app would point
// these at the runtime it ships.
const path = require('node:path');
const { app, BrowserWindow, ipcMain, MessageChannelMain, utilityProcess } = require('electron');
const { createHost } = require('./bridge.js');

const MODE = process.env.LLAMA_HOST_MODE === 'utility' ? 'utility' : 'main';

const workerOptions = {
  ...(process.env.LLAMA_WORKER_COMMAND ? { command: process.env.LLAMA_WORKER_COMMAND } : {}),
  ...(process.env.LLAMA_WORKER_PYTHON ? { python: process.env.LLAMA_WORKER_PYTHON } : {}),
  // Keep the worker's log in our own log; the client drains stderr either way.
  onStderr: (data) => process.stderr.write(data),
};
// null model path: $LLAMA_WORKER_MODEL, else the worker's bundled default model.
const loadOptions = { modelPath: process.env.LLAMA_MODEL_PATH ?? null, systemPrompt: 'You are a helpful assistant.' };

/** mode 'main': the bridge, living in this process. */
let hostPromise = null;
/** mode 'utility': the utility process hosting the bridge. */
let utility = null;

function startHost() {
  if (MODE === 'utility') {
    utility = utilityProcess.fork(path.join(__dirname, 'llama-host.js'), [], { serviceName: 'llama-worker host', stdio: 'inherit' });
    // Functions do not cross processes; the client in the utility process still drains the worker's
    // stderr and keeps its tail for crash reports.
    const { onStderr, ...plainOptions } = workerOptions;
    utility.postMessage({ type: 'start', workerOptions: plainOptions, loadOptions });
    utility.on('exit', (code) => console.log(`llama-worker host (utility process) exited with code ${code}`));
  } else {
    hostPromise = createHost(workerOptions, loadOptions);
  }
}

/** Give a renderer its own MessagePort to the host. */
async function connectRenderer(webContents) {
  const { port1, port2 } = new MessageChannelMain();
  if (MODE === 'utility') utility.postMessage({ type: 'connect' }, [port1]);
  else (await hostPromise).connect(port1);
  // The preload forwards port2 to the page (ports cannot cross the contextBridge).
  webContents.postMessage('llama:port', null, [port2]);
}

function createWindow() {
  const win = new BrowserWindow({
    width: 900,
    height: 700,
    webPreferences: {
      preload: path.join(__dirname, 'preload.js'),
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
    },
  });
  win.loadFile(path.join(__dirname, 'index.html'));
}

/** Shut the worker down in order (cleanup, end stdin, wait, SIGTERM, SIGKILL), bounded. */
async function stopHost() {
  if (MODE === 'utility') {
    if (!utility) return;
    const exited = new Promise((resolve) => utility.once('exit', resolve));
    utility.postMessage({ type: 'close' });
    const timeout = new Promise((resolve) => setTimeout(resolve, 15_000));
    if ((await Promise.race([exited.then(() => 'exited'), timeout])) !== 'exited') utility.kill();
  } else if (hostPromise) {
    await (await hostPromise).close();
  }
}

ipcMain.on('llama:connect', (event) => {
  connectRenderer(event.sender).catch((err) => console.error('could not connect the renderer:', err));
});

app.whenReady().then(() => {
  startHost();
  createWindow();
  app.on('activate', () => {
    if (BrowserWindow.getAllWindows().length === 0) createWindow();
  });
});

app.on('window-all-closed', () => {
  if (process.platform !== 'darwin') app.quit();
});

// Quit only once the worker is down: no orphaned model process, no lost frames.
// (If the app is killed outright, the worker notices its parent is gone and exits itself.)
let stopping = null;
app.on('before-quit', (event) => {
  if (stopping === 'done') return;
  event.preventDefault();
  if (stopping) return;
  stopping = stopHost()
    .catch((err) => console.error('stopping the worker failed:', err))
    .finally(() => {
      stopping = 'done';
      app.quit();
    });
});
