'use strict';
// Preload (sandboxed, context-isolated): ask main for a MessagePort and hand
// it to the page. A MessagePort cannot go through contextBridge, so it is
// forwarded with window.postMessage, as in Electron's MessagePort tutorial.
const { ipcRenderer } = require('electron');

ipcRenderer.on('llama:port', (event) => {
  window.postMessage('llama:port', '*', event.ports);
});

ipcRenderer.send('llama:connect');
